//! The loops only the leader runs: orchestrate (services → tasks), schedule (tasks → nodes),
//! and expire the sessions of silent nodes.
//!
//! Each pass reads a consistent view of the store, calls the pure cores
//! ([`crate::orchestrator`], [`crate::scheduler`]) and commits their result through Raft in
//! batches. A pass that loses a compare-and-set race simply runs again: the cores are
//! idempotent, so a crash or a lost leadership at any point loses or duplicates nothing.

use std::time::{Duration, Instant};

use shoal_proto::store_object::Object;
use shoal_proto::{now_ms, ChangeKind, StoreChange, Task, TaskState};
use tokio::sync::broadcast::error::TryRecvError;

use crate::consensus::{new_id, WriteError, Writer};
use crate::dispatcher::Dispatcher;
use crate::store::{change, Store};
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
        if tokio::time::timeout(timeout, events.recv()).await.is_ok() {
            while let Ok(_) | Err(TryRecvError::Lagged(_)) = events.try_recv() {}
        }
    }
}

/// One orchestrate + schedule pass. Returns when it next wants to run by itself.
async fn pass(store: &Store, writer: &Writer) -> Result<Option<i64>, WriteError> {
    let plan = {
        let state = store.read();
        let services: Vec<_> = state.services.values().cloned().collect();
        let tasks: Vec<_> = state.tasks.values().cloned().collect();
        let nodes: Vec<_> = state.nodes.values().cloned().collect();
        orchestrator::reconcile_all(&services, &tasks, &nodes, now_ms(), &mut new_id)
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

    let decisions = {
        let state = store.read();
        let tasks: Vec<_> = state.tasks.values().cloned().collect();
        let nodes: Vec<_> = state.nodes.values().cloned().collect();
        let decisions = scheduler::schedule(&nodes, &tasks);
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
    commit_in_batches(writer, decisions).await?;
    Ok(plan.wake_at)
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
