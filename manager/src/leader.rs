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
use shoal_proto::{now_ms, ChangeKind, Node, StoreChange, Task, TaskState};
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
        if woke.any && !woke.urgent && !(woke.running && waits_on_running_tasks(&store)) {
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
    /// A task reported RUNNING: urgent too while a service waits for that (see
    /// [`waits_on_running_tasks`]).
    running: bool,
}

/// A rollout (the next batch starts once the last one runs) or a `depends_on` condition
/// waits for tasks to run: a pass must follow their RUNNING reports at once, or every step
/// of a rollout or a dependency chain would lose up to [`STATUS_PASS_INTERVAL`].
fn waits_on_running_tasks(store: &Store) -> bool {
    use shoal_proto::UpdateState;
    let state = store.read();
    state.services.values().any(|s| {
        let updating = s.update_status.as_ref().is_some_and(|u| {
            matches!(
                u.state(),
                UpdateState::Updating | UpdateState::RollbackStarted
            )
        });
        updating
            || s.spec
                .as_ref()
                .is_some_and(|spec| !spec.depends_on.is_empty())
    })
}

impl Wake {
    fn note(&mut self, event: Result<Arc<Vec<Event>>, RecvError>) {
        self.any = true;
        if let Ok(batch) = &event {
            self.running |= batch.iter().any(|e| {
                matches!(
                    e,
                    Event::Task(TaskEvent {
                        change: TaskChange::Status(TaskState::Running),
                        ..
                    })
                )
            });
        }
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
    let started = Instant::now();
    // Services' cluster-wide endpoints first (virtual addresses, ingress ports): the
    // orchestrator's service writes below are compare-and-sets on the versions it reads
    // after these.
    let endpoints: Vec<StoreChange> = {
        let state = store.read();
        let mut ipam = crate::ipam::TaskIpam::new(&state);
        let mut ports = crate::ingress::IngressPorts::new(&state);
        state
            .services
            .values()
            .filter_map(|s| {
                let vips = ipam.virtual_ips(s);
                let ingress = ports.resolve(s);
                if vips.is_none() && ingress.is_none() {
                    return None;
                }
                let mut s = s.clone();
                s.virtual_ips = vips.unwrap_or(s.virtual_ips);
                s.ingress_ports = ingress.unwrap_or(s.ingress_ports);
                Some(change(ChangeKind::Update, Object::Service(Box::new(s))))
            })
            .collect()
    };
    commit_in_batches(writer, endpoints.into_iter()).await?;
    // The pure cores read the store in place: copying every task first would cost more than
    // the reconcile itself, and hold twice the tasks in memory, on every pass.
    let plan = {
        let state = store.read();
        let nodes: Vec<&Node> = state.nodes.values().collect();
        orchestrator::reconcile_all_refs(
            state.services.values(),
            state.tasks.values().map(|t| &**t),
            &nodes,
            now_ms(),
            &mut new_id,
        )
    };
    // Service rewrites (update status, rollback) first, so they land in the first batch with
    // the task changes of the same rollout step; each is a compare-and-set on the version read.
    // The changes are made batch by batch as they are committed: a list of them all would
    // hold every task of a large plan twice.
    let planned = (
        started.elapsed(),
        plan.services.len() + plan.create.len() + plan.update.len() + plan.delete.len(),
    );
    let wake_at = plan.wake_at;
    let changes = plan
        .services
        .into_iter()
        .map(|s| change(ChangeKind::Update, Object::Service(Box::new(s))))
        .chain(
            plan.create
                .into_iter()
                .map(|t| change(ChangeKind::Create, Object::Task(t))),
        )
        .chain(
            plan.update
                .into_iter()
                .map(|t| change(ChangeKind::Update, Object::Task(t))),
        )
        .chain(plan.delete.into_iter().map(|id| {
            change(
                ChangeKind::Delete,
                Object::Task(Task {
                    id,
                    ..Default::default()
                }),
            )
        }));
    commit_in_batches(writer, changes).await?;
    let orchestrated = started.elapsed();

    let mut decisions: Vec<Placement> = {
        let state = store.read();
        let tasks: Vec<&Task> = state.tasks.values().map(|t| &**t).collect();
        let nodes: Vec<&Node> = state.nodes.values().collect();
        scheduler::schedule_refs(&nodes, &tasks)
            .into_iter()
            .filter_map(|d| {
                let version = state.tasks.get(&d.task_id)?.meta.as_ref()?.version;
                Some(Placement {
                    decision: d,
                    version,
                })
            })
            .collect()
    };
    group_by_node(&mut decisions);
    let scheduled = (started.elapsed(), decisions.len());
    // A placed task gets its overlay addresses in the same write (see `crate::ipam`).
    let mut ipam = crate::ipam::TaskIpam::new(&store.read());
    // Each task is copied when its batch is committed, as it is then; one changed since
    // the scheduler saw it is left to the next pass.
    let changes = decisions.into_iter().filter_map(|p| {
        let state = store.read();
        let task = state.tasks.get(&p.decision.task_id)?;
        if task.meta.as_ref().map(|m| m.version) != Some(p.version) {
            return None;
        }
        let mut task = Task::clone(task);
        drop(state);
        let addresses = match &p.decision.node_id {
            Some(_) if !ipam.is_empty() => ipam.assign(&task),
            _ => Ok(task.network_addresses.clone()),
        };
        match (p.decision.node_id, addresses) {
            (Some(_), Err(error)) if task.scheduling_error == error => return None,
            (Some(_), Err(error)) => task.scheduling_error = error,
            (Some(node_id), Ok(addresses)) => {
                task.network_addresses = addresses;
                task.node_id = node_id;
                task.scheduling_error.clear();
                task.status = Some(shoal_proto::TaskStatus {
                    state: TaskState::Assigned as i32,
                    timestamp: now_ms(),
                    message: "scheduler assigned task to node".into(),
                    ..Default::default()
                });
            }
            (None, _) if task.scheduling_error == p.decision.error => return None,
            (None, _) => task.scheduling_error = p.decision.error,
        }
        Some(change(ChangeKind::Update, Object::Task(task)))
    });
    commit_in_batches(writer, changes).await?;
    if planned.1 + scheduled.1 > 0 {
        tracing::debug!(
            changes = planned.1,
            placements = scheduled.1,
            reconcile_ms = planned.0.as_millis() as u64,
            orchestrated_ms = orchestrated.as_millis() as u64,
            scheduled_ms = scheduled.0.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "orchestration pass"
        );
    }
    Ok(wake_at)
}

/// A scheduler decision and the version of the task it was made for.
struct Placement {
    decision: scheduler::Decision,
    version: u64,
}

/// Orders placements node by node (stable otherwise). The scheduler spreads consecutive
/// tasks over every node; committed in that order, each batch would add a task or two to
/// every node's set, and every node's session would resend its whole set after each batch.
/// Grouped, a batch completes the sets of a few nodes, each sent once.
fn group_by_node(placements: &mut [Placement]) {
    placements.sort_by(|a, b| a.decision.node_id.cmp(&b.decision.node_id));
}

/// Commits `changes` in commands of at most [`BATCH`] changes, proposed in order with up
/// to [`IN_FLIGHT`] at a time, so that Raft's group commit writes them in one entry and one
/// fsync. Each command is atomic; a failed one ends the call (the next pass redoes what is
/// missing).
async fn commit_in_batches(
    writer: &Writer,
    changes: impl Iterator<Item = StoreChange>,
) -> Result<(), WriteError> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let mut changes = changes.peekable();
    let batches = std::iter::from_fn(move || {
        changes.peek()?;
        Some(changes.by_ref().take(BATCH).collect::<Vec<StoreChange>>())
    });
    stream::iter(batches)
        .map(|batch| writer.commit(batch))
        .buffered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// How many batches of one pass are proposed at a time.
const IN_FLIGHT: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Immediate;
    use shoal_proto::service_spec::Mode;
    use shoal_proto::{Node, NodeState, NodeStatus, ReplicatedService, Service, ServiceSpec};
    use std::sync::Arc;

    fn placement(id: &str, node: Option<&str>) -> Placement {
        Placement {
            decision: scheduler::Decision {
                task_id: id.into(),
                node_id: node.map(str::to_string),
                error: String::new(),
            },
            version: 1,
        }
    }

    #[test]
    fn placements_are_committed_node_by_node_in_their_order() {
        let mut placements = vec![
            placement("a", Some("n2")),
            placement("b", Some("n1")),
            placement("c", Some("n2")),
            placement("d", Some("n1")),
            placement("e", None),
        ];
        group_by_node(&mut placements);
        let ids: Vec<&str> = placements
            .iter()
            .map(|p| p.decision.task_id.as_str())
            .collect();
        assert_eq!(ids, ["e", "b", "d", "a", "c"]);
    }

    #[tokio::test]
    async fn a_large_plan_is_committed_in_entries_of_at_most_a_batch() {
        let store = Store::new();
        let writer = Writer::new(Arc::new(Immediate::new(store.clone())));
        let changes = (0..BATCH * 2 + 1).map(|i| {
            change(
                ChangeKind::Create,
                Object::Task(Task {
                    id: format!("t{i}"),
                    ..Default::default()
                }),
            )
        });
        commit_in_batches(&writer, changes).await.expect("commits");
        let state = store.read();
        assert_eq!(state.tasks.len(), BATCH * 2 + 1);
        // One version (log index) per entry: three entries.
        let versions: std::collections::BTreeSet<u64> = state
            .tasks
            .values()
            .filter_map(|t| t.meta.as_ref().map(|m| m.version))
            .collect();
        assert_eq!(versions.len(), 3);
    }

    fn status_event(state: TaskState) -> Event {
        Event::Task(TaskEvent {
            id: "t".into(),
            node_id: "n".into(),
            previous_node_id: None,
            change: TaskChange::Status(state),
            cluster_wide: false,
        })
    }

    #[test]
    fn only_status_reports_can_wait_for_the_next_pass() {
        let mut woke = Wake::default();
        woke.note(Ok(Arc::new(vec![status_event(TaskState::Starting)])));
        assert_eq!(
            woke,
            Wake {
                any: true,
                urgent: false,
                running: false,
            }
        );
        woke.note(Ok(Arc::new(vec![status_event(TaskState::Running)])));
        assert!(
            woke.running && !woke.urgent,
            "running: urgent only for a rollout"
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
                change(ChangeKind::Create, Object::Service(Box::new(service))),
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
