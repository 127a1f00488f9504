//! The loops only the leader runs: orchestrate (services → tasks), schedule (tasks → nodes),
//! and expire the sessions of silent nodes.
//!
//! Each pass reads a consistent view of the store, calls the pure cores
//! ([`crate::orchestrator`], [`crate::scheduler`]) and commits their result through Raft in
//! batches. A pass that loses a compare-and-set race simply runs again: the cores are
//! idempotent, so a crash or a lost leadership at any point loses or duplicates nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::store_object::Object;
use shoal_proto::{now_ms, ChangeKind, StoreChange, Task, TaskState};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::consensus::{new_id, WriteError, Writer};
use crate::dispatcher::Dispatcher;
use crate::store::{change, Event, Store, TaskChange, TaskEvent};
use crate::{orchestrator, scheduler};

/// How many changes go into one Raft entry.
const BATCH: usize = 2_000;
/// The longest the loop sleeps without a change: heartbeat expiry is checked this often.
const IDLE_TICK: Duration = Duration::from_millis(200);
/// A loop turn this much later than due means the process was stalled.
const STALL: Duration = Duration::from_secs(2);

pub async fn run(store: Store, writer: Writer, dispatcher: Dispatcher) {
    let mut events = store.subscribe();
    let mut leader_since: Option<Instant> = None;
    let mut last_turn = Instant::now();
    loop {
        // A turn that comes far later than the tick means this process was stalled (frozen,
        // starved): the agents could not reach it either, so they get a fresh TTL to come
        // back before their nodes are marked down.
        if last_turn.elapsed() > STALL {
            tracing::warn!(stalled = ?last_turn.elapsed(), "the manager was stalled; agents get a fresh heartbeat period");
            leader_since = None;
        }
        last_turn = Instant::now();
        if !writer.is_leader() {
            leader_since = None;
            tokio::time::sleep(IDLE_TICK).await;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let wake_at = match pass(&store, &writer).await {
            Ok(wake_at) => wake_at,
            Err(e) => {
                tracing::warn!("orchestration pass failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
        };
        if let Err(e) = dispatcher.expire_sessions(since).await {
            tracing::warn!("could not mark silent nodes down: {e}");
        }
        let mut timeout = IDLE_TICK;
        if let Some(at) = wake_at {
            let ms = (at - now_ms()).max(0) as u64;
            timeout = timeout.min(Duration::from_millis(ms));
        }
        // Sleep until something changes (or the timeout), then swallow the burst of events
        // that usually follows so one pass covers it.
        let mut woke = Wake::default();
        if let Ok(first) = tokio::time::timeout(timeout, events.recv()).await {
            woke.note(first);
            drain(&mut events, &mut woke);
        }
        // Only task statuses moved (agents' reports): rollouts and start-first replacements
        // follow them, but not to the millisecond. Wait out the rest of the interval (unless
        // something more pressing comes), so a stream of reports costs a few passes, not one
        // each.
        if woke.any && !woke.urgent {
            let until = tokio::time::Instant::from_std(last_turn + STATUS_PASS_INTERVAL);
            while !woke.urgent {
                match tokio::time::timeout_at(until, events.recv()).await {
                    Ok(event) => {
                        woke.note(event);
                        drain(&mut events, &mut woke);
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

/// How often a pass runs at most while only task statuses change.
const STATUS_PASS_INTERVAL: Duration = Duration::from_millis(250);

/// What the events since the last pass call for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wake {
    /// Something changed.
    any: bool,
    /// Something changed that a pass must see at once: anything but a task's status moving
    /// to another non-terminal state (an ended task is restarted without delay).
    urgent: bool,
}

impl Wake {
    fn note(&mut self, event: Result<Arc<Vec<Event>>, RecvError>) {
        self.any = true;
        self.urgent |= match event {
            Ok(batch) => batch.is_empty() || batch.iter().any(needs_prompt_pass),
            Err(_) => true, // lagged (or closed): assume the worst
        };
    }
}

fn needs_prompt_pass(event: &Event) -> bool {
    !matches!(
        event,
        Event::Task(TaskEvent {
            change: TaskChange::Status(state),
            ..
        }) if !state.is_terminal()
    )
}

/// Takes every event already waiting.
fn drain(events: &mut broadcast::Receiver<Arc<Vec<Event>>>, woke: &mut Wake) {
    loop {
        match events.try_recv() {
            Ok(batch) => woke.note(Ok(batch)),
            Err(TryRecvError::Lagged(n)) => woke.note(Err(RecvError::Lagged(n))),
            Err(_) => return,
        }
    }
}

/// One orchestrate + schedule pass. Returns when it next wants to run by itself.
async fn pass(store: &Store, writer: &Writer) -> Result<Option<i64>, WriteError> {
    // The pure cores read the store in place: copying every task first would cost more than
    // the reconcile itself, and hold twice the tasks in memory, on every pass.
    let plan = {
        let state = store.read();
        let nodes: Vec<_> = state.nodes.values().cloned().collect();
        orchestrator::reconcile_all_refs(
            state.services.values(),
            state.tasks.values(),
            &nodes,
            now_ms(),
            &mut new_id,
        )
    };
    // Service rewrites (update status, rollback) first, so they land in the first batch with
    // the task changes of the same rollout step; each is a compare-and-set on the version read.
    let mut changes: Vec<StoreChange> = plan
        .services
        .into_iter()
        .map(|s| change(ChangeKind::Update, Object::Service(s)))
        .collect();
    changes.extend(
        plan.create
            .into_iter()
            .map(|t| change(ChangeKind::Create, Object::Task(t))),
    );
    changes.extend(
        plan.update
            .into_iter()
            .map(|t| change(ChangeKind::Update, Object::Task(t))),
    );
    changes.extend(plan.delete.into_iter().map(|id| {
        change(
            ChangeKind::Delete,
            Object::Task(Task {
                id,
                ..Default::default()
            }),
        )
    }));
    commit_in_batches(writer, changes).await?;

    let mut decisions = {
        let state = store.read();
        let tasks: Vec<&Task> = state.tasks.values().collect();
        let nodes: Vec<_> = state.nodes.values().cloned().collect();
        let decisions = scheduler::schedule_refs(&nodes, &tasks);
        decisions
            .into_iter()
            .filter_map(|d| {
                let mut task = state.tasks.get(&d.task_id)?.clone();
                match d.node_id {
                    Some(node_id) => {
                        task.node_id = node_id;
                        task.scheduling_error.clear();
                        task.status = Some(shoal_proto::TaskStatus {
                            state: TaskState::Assigned as i32,
                            timestamp: now_ms(),
                            message: "scheduler assigned task to node".into(),
                            ..Default::default()
                        });
                    }
                    None if task.scheduling_error == d.error => return None,
                    None => task.scheduling_error = d.error,
                }
                Some(change(ChangeKind::Update, Object::Task(task)))
            })
            .collect::<Vec<_>>()
    };
    group_by_node(&mut decisions);
    commit_in_batches(writer, decisions).await?;
    Ok(plan.wake_at)
}

/// Orders task changes node by node (stable otherwise). Placements spread consecutive tasks
/// over every node; committed in that order, each batch would add a task or two to every
/// node's set, and every node's session would resend its whole set after each batch. Grouped,
/// a batch completes the sets of a few nodes, each sent once.
fn group_by_node(changes: &mut [StoreChange]) {
    changes.sort_by_cached_key(
        |c| match c.object.as_ref().and_then(|o| o.object.as_ref()) {
            Some(Object::Task(t)) => t.node_id.clone(),
            _ => String::new(),
        },
    );
}

async fn commit_in_batches(
    writer: &Writer,
    mut changes: Vec<StoreChange>,
) -> Result<(), WriteError> {
    while !changes.is_empty() {
        let rest = changes.split_off(changes.len().min(BATCH));
        writer.commit(changes).await?;
        changes = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Immediate;
    use shoal_proto::service_spec::Mode;
    use shoal_proto::{Node, NodeState, NodeStatus, ReplicatedService, Service, ServiceSpec};
    use std::sync::Arc;

    fn task_change(id: &str, node: &str) -> StoreChange {
        change(
            ChangeKind::Update,
            Object::Task(Task {
                id: id.into(),
                node_id: node.into(),
                ..Default::default()
            }),
        )
    }

    fn ids(changes: &[StoreChange]) -> Vec<String> {
        changes
            .iter()
            .filter_map(|c| match c.object.as_ref()?.object.as_ref()? {
                Object::Task(t) => Some(t.id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn placements_are_committed_node_by_node_in_their_order() {
        let mut changes = vec![
            task_change("a", "n2"),
            task_change("b", "n1"),
            task_change("c", "n2"),
            task_change("d", "n1"),
            task_change("e", ""),
        ];
        group_by_node(&mut changes);
        assert_eq!(ids(&changes), ["e", "b", "d", "a", "c"]);
    }

    fn status_event(state: TaskState) -> Event {
        Event::Task(TaskEvent {
            id: "t".into(),
            node_id: "n".into(),
            previous_node_id: None,
            change: TaskChange::Status(state),
        })
    }

    #[test]
    fn only_status_reports_can_wait_for_the_next_pass() {
        let mut woke = Wake::default();
        woke.note(Ok(Arc::new(vec![status_event(TaskState::Running)])));
        assert_eq!(
            woke,
            Wake {
                any: true,
                urgent: false
            }
        );
        woke.note(Ok(Arc::new(vec![status_event(TaskState::Failed)])));
        assert!(woke.urgent, "an ended task is restarted at once");

        let mut woke = Wake::default();
        woke.note(Ok(Arc::new(vec![Event::Put {
            kind: "service",
            id: "s".into(),
        }])));
        assert!(woke.urgent);
        let mut woke = Wake::default();
        woke.note(Ok(Arc::new(Vec::new())));
        assert!(woke.urgent, "a replaced state is re-read at once");
        let mut woke = Wake::default();
        woke.note(Err(RecvError::Lagged(3)));
        assert!(woke.urgent, "missed events may have been anything");
    }

    #[tokio::test]
    async fn a_pass_creates_and_assigns_every_replica_once() {
        let store = Store::new();
        let writer = Writer::new(Arc::new(Immediate::new(store.clone())));
        let node = Node {
            id: "n1".into(),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let service = Service {
            id: "s1".into(),
            meta: None,
            spec: Some(ServiceSpec {
                name: "web".into(),
                mode: Some(Mode::Replicated(ReplicatedService { replicas: 3 })),
                ..Default::default()
            }),
            ..Default::default()
        };
        writer
            .commit(vec![
                change(ChangeKind::Create, Object::Node(node)),
                change(ChangeKind::Create, Object::Service(service)),
            ])
            .await
            .expect("seeded");
        pass(&store, &writer).await.expect("first pass");
        pass(&store, &writer)
            .await
            .expect("second pass changes nothing");
        let state = store.read();
        assert_eq!(state.tasks.len(), 3);
        assert!(state.tasks.values().all(|t| t.node_id == "n1"
            && t.status.as_ref().map(|s| s.state()) == Some(TaskState::Assigned)));
    }
}
