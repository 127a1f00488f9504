//! The cluster state and its deterministic `apply`: the state machine Raft replicates.
//!
//! Pure: no I/O, no clock (the proposer stamps the time into the command), so every manager
//! that applies the same log ends with the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use shoal_proto::{
    store_object::Object, ChangeKind, Cluster, Meta, Network, Node, Secret, SecretKind, Service,
    SharedSpec, Stack, StoreChange, StoreCommand, StoreObject, StoreSnapshot, Task, TaskState,
};

/// How many request ids are remembered to make retried commands idempotent.
const REMEMBERED_REQUESTS: usize = 10_000;

/// Why a command was not applied. A rejected command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApplyError {
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: String, id: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: String, id: String },
    #[error("{kind} {id} was changed by someone else (version {actual}, expected {expected}): read it again and retry")]
    Conflict {
        kind: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} name {name:?} is already in use by {kind} {id}")]
    NameInUse {
        kind: String,
        name: String,
        id: String,
    },
    #[error("invalid change: {0}")]
    Invalid(String),
}

/// What an applied command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The version every object written by the command now has (the log index).
    pub version: u64,
    /// The command's request id had been applied before: nothing was done this time.
    pub duplicate: bool,
}

/// What a change did, as watchers hear it: which object, and for a task, the nodes it
/// concerns and whether only its status moved. Events carry no copy of the objects (a batch
/// of thousands of tasks would otherwise be held again by every buffered event); watchers
/// read the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A task was created, changed or deleted.
    Task(TaskEvent),
    /// Another kind of object was created or changed.
    Put { kind: &'static str, id: String },
    /// Another kind of object was deleted.
    Deleted { kind: &'static str, id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub id: String,
    /// The node the task is on after the change (before it, for a deletion); empty: none.
    pub node_id: String,
    /// The node it was on before the change, when that was another one.
    pub previous_node_id: Option<String>,
    pub change: TaskChange,
    /// Other nodes follow the task, its status included: it has addresses on overlay
    /// networks (where to reach it, whether DNS gives it out), or its service publishes
    /// ingress ports (the routing mesh sends to it from every node).
    pub cluster_wide: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskChange {
    /// Created, or changed in more than its status.
    Written,
    /// Only its observed status changed (an agent's report, mostly), now in this state.
    Status(TaskState),
    Deleted,
}

/// The event for `task` written over `previous`.
fn task_event(previous: Option<&Task>, task: &Task) -> TaskEvent {
    let change = match previous {
        Some(old) if same_but_status(old, task) => {
            TaskChange::Status(task.status.as_ref().map(|s| s.state()).unwrap_or_default())
        }
        _ => TaskChange::Written,
    };
    TaskEvent {
        id: task.id.clone(),
        node_id: task.node_id.clone(),
        previous_node_id: previous
            .filter(|old| old.node_id != task.node_id)
            .map(|old| old.node_id.clone()),
        change,
        cluster_wide: is_cluster_wide(task) || previous.is_some_and(is_cluster_wide),
    }
}

fn is_cluster_wide(task: &Task) -> bool {
    !task.network_addresses.is_empty() || crate::ingress::has_ingress_ports(task.spec.as_deref())
}

/// Whether two versions of a task differ in nothing but their status (and store metadata).
/// Destructured field by field, so that a new field must be considered here.
pub fn same_but_status(a: &Task, b: &Task) -> bool {
    let Task {
        id,
        meta: _,
        service_id,
        slot,
        node_id,
        spec,
        spec_version,
        desired_state,
        status: _,
        scheduling_error,
        drain_ms,
        out_of_rotation,
        network_addresses,
    } = a;
    *id == b.id
        && *service_id == b.service_id
        && *slot == b.slot
        && *node_id == b.node_id
        && *spec_version == b.spec_version
        && *desired_state == b.desired_state
        && *scheduling_error == b.scheduling_error
        && *drain_ms == b.drain_ms
        && *out_of_rotation == b.out_of_rotation
        && *network_addresses == b.network_addresses
        && *spec == b.spec
}

#[derive(Debug, Default, Clone)]
pub struct State {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Box<Task>>,
    pub stacks: BTreeMap<String, Stack>,
    pub networks: BTreeMap<String, Network>,
    /// Secrets and configs (one map: they differ only in how tasks get them).
    pub secrets: BTreeMap<String, Secret>,
    recent_requests: VecDeque<String>,
    recent_set: HashSet<String>,
    /// Task ids by the node they are assigned to: a dispatcher session reads its node's tasks
    /// on every change, which must not cost a scan of every task in the cluster.
    tasks_by_node: HashMap<String, BTreeSet<String>>,
    /// The spec every stored task of a (service, spec version) shares (see [`SharedSpec`]):
    /// a task decoded from the log or a snapshot brings its own copy, swapped for this one.
    task_specs: HashMap<(String, u64), SharedSpec>,
    /// The size of `task_specs` after its last pruning.
    task_specs_pruned: usize,
    /// The ids of the services, networks, secrets and configs by (kind, name): every write of
    /// one checks that its name is free, which must not cost a scan of every object of its
    /// kind. A set, so that names that clash anyway (state made outside `apply`) stay known.
    names: HashMap<(&'static str, String), BTreeSet<String>>,
}

fn kind_of(object: &Object) -> &'static str {
    match object {
        Object::Cluster(_) => "cluster",
        Object::Node(_) => "node",
        Object::Service(_) => "service",
        Object::Task(_) => "task",
        Object::Stack(_) => "stack",
        Object::Network(_) => "network",
        Object::Secret(o) => secret_kind_name(o),
    }
}

/// Secrets and configs share a map but not their names.
fn secret_kind_name(o: &Secret) -> &'static str {
    match o.spec.as_ref().map(|s| s.kind()) {
        Some(SecretKind::Config) => "config",
        _ => "secret",
    }
}

fn id_of(object: &Object) -> &str {
    match object {
        Object::Cluster(o) => &o.id,
        Object::Node(o) => &o.id,
        Object::Service(o) => &o.id,
        Object::Task(o) => &o.id,
        Object::Stack(o) => &o.id,
        Object::Network(o) => &o.id,
        Object::Secret(o) => &o.id,
    }
}

/// The name of the kinds whose names are unique.
fn name_of(object: &Object) -> Option<&str> {
    match object {
        Object::Service(o) => Some(o.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")),
        Object::Network(o) => Some(o.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")),
        Object::Secret(o) => Some(o.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")),
        _ => None,
    }
}

fn meta_of(object: &Object) -> Option<&Meta> {
    match object {
        Object::Cluster(o) => o.meta.as_ref(),
        Object::Node(o) => o.meta.as_ref(),
        Object::Service(o) => o.meta.as_ref(),
        Object::Task(o) => o.meta.as_ref(),
        Object::Stack(o) => o.meta.as_ref(),
        Object::Network(o) => o.meta.as_ref(),
        Object::Secret(o) => o.meta.as_ref(),
    }
}

fn meta_mut(object: &mut Object) -> &mut Option<Meta> {
    match object {
        Object::Cluster(o) => &mut o.meta,
        Object::Node(o) => &mut o.meta,
        Object::Service(o) => &mut o.meta,
        Object::Task(o) => &mut o.meta,
        Object::Stack(o) => &mut o.meta,
        Object::Network(o) => &mut o.meta,
        Object::Secret(o) => &mut o.meta,
    }
}

impl State {
    /// Applies one log entry at `index`, atomically: every change or none. The objects move
    /// from the command into the state.
    pub fn apply(
        &mut self,
        index: u64,
        command: StoreCommand,
    ) -> Result<(Applied, Vec<Event>), ApplyError> {
        let StoreCommand {
            request_id,
            changes,
            timestamp,
        } = command;
        if !request_id.is_empty() && self.recent_set.contains(&request_id) {
            let applied = Applied {
                version: index,
                duplicate: true,
            };
            return Ok((applied, Vec::new()));
        }
        // Check every change against the state as the earlier changes of this command leave it,
        // on a scratch list of only the touched objects (indexed, so a command of thousands of
        // changes costs no quadratic scan, and nothing stored is cloned), then commit.
        let mut staged: Vec<(&'static str, String, Option<Object>)> =
            Vec::with_capacity(changes.len());
        let mut latest: HashMap<(&'static str, String), usize> = HashMap::new();
        for change in changes {
            let object = change
                .object
                .and_then(|o| o.object)
                .ok_or_else(|| ApplyError::Invalid("a change without an object".into()))?;
            let kind = kind_of(&object);
            let id = id_of(&object).to_string();
            if id.is_empty() {
                return Err(ApplyError::Invalid(format!("a {kind} without an id")));
            }
            let key = (kind, id);
            // (version, created_at) of the object as the earlier changes leave it; `None`:
            // there is none.
            let current: Option<(u64, Option<i64>)> = match latest.get(&key) {
                Some(&at) => staged[at].2.as_ref().map(|o| {
                    let meta = meta_of(o);
                    (
                        meta.map(|m| m.version).unwrap_or(0),
                        meta.map(|m| m.created_at),
                    )
                }),
                None => self.peek_meta(kind, &key.1),
            };
            let (kind, id) = key;
            let current_version = current.map(|(v, _)| v).unwrap_or(0);
            let given_version = meta_of(&object).map(|m| m.version).unwrap_or(0);
            let change_kind = ChangeKind::try_from(change.kind)
                .map_err(|_| ApplyError::Invalid(format!("unknown change kind {}", change.kind)))?;
            match change_kind {
                ChangeKind::Create if current.is_some() => {
                    return Err(ApplyError::AlreadyExists {
                        kind: kind.into(),
                        id,
                    })
                }
                ChangeKind::Update | ChangeKind::Delete if current.is_none() => {
                    return Err(ApplyError::NotFound {
                        kind: kind.into(),
                        id,
                    })
                }
                ChangeKind::Update if given_version != current_version => {
                    return Err(ApplyError::Conflict {
                        kind: kind.into(),
                        id,
                        expected: given_version,
                        actual: current_version,
                    })
                }
                ChangeKind::Delete if given_version != 0 && given_version != current_version => {
                    return Err(ApplyError::Conflict {
                        kind: kind.into(),
                        id,
                        expected: given_version,
                        actual: current_version,
                    })
                }
                _ => {}
            }
            if change_kind != ChangeKind::Delete {
                self.check_name(&object, &staged)?;
            }
            let next = if change_kind == ChangeKind::Delete {
                None
            } else {
                let mut object = object;
                let created_at = current
                    .and_then(|(_, created)| created)
                    .unwrap_or(timestamp);
                *meta_mut(&mut object) = Some(Meta {
                    version: index,
                    created_at,
                    updated_at: timestamp,
                });
                Some(object)
            };
            latest.insert((kind, id.clone()), staged.len());
            staged.push((kind, id, next));
        }
        let mut events = Vec::with_capacity(staged.len());
        for (kind, id, object) in staged {
            // The state holds the previous version of the object here (earlier changes of
            // this command to the same object are already in).
            match object {
                Some(Object::Task(task)) => {
                    let event = task_event(self.tasks.get(&id).map(|t| &**t), &task);
                    self.put(Object::Task(task));
                    events.push(Event::Task(event));
                }
                Some(object) => {
                    self.put(object);
                    events.push(Event::Put { kind, id });
                }
                None if kind == "task" => {
                    let (node_id, cluster_wide) = self
                        .tasks
                        .get(&id)
                        .map(|t| (t.node_id.clone(), is_cluster_wide(t)))
                        .unwrap_or_default();
                    self.remove(kind, &id);
                    events.push(Event::Task(TaskEvent {
                        id,
                        node_id,
                        previous_node_id: None,
                        change: TaskChange::Deleted,
                        cluster_wide,
                    }));
                }
                None => {
                    self.remove(kind, &id);
                    events.push(Event::Deleted { kind, id });
                }
            }
        }
        self.remember(&request_id);
        Ok((
            Applied {
                version: index,
                duplicate: false,
            },
            events,
        ))
    }

    /// Services and networks have unique names (checked against the state as the command's
    /// earlier changes leave it).
    fn check_name(
        &self,
        object: &Object,
        staged: &[(&'static str, String, Option<Object>)],
    ) -> Result<(), ApplyError> {
        let kind = kind_of(object);
        let Some(name) = name_of(object) else {
            return Ok(());
        };
        let id = id_of(object);
        if name.is_empty() {
            return Err(ApplyError::Invalid(format!("{kind} {id} has no name")));
        }
        // Stored objects that this command changes are judged by their staged versions.
        let stored = self
            .names
            .get(&(kind, name.to_string()))
            .into_iter()
            .flatten()
            .map(|other| (other.as_str(), name))
            .filter(|(i, _)| !staged.iter().any(|(k, s, _)| *k == kind && s == i));
        let staged = staged
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .filter_map(|(_, _, o)| o.as_ref())
            .filter_map(|o| Some((id_of(o), name_of(o)?)));
        let clash = stored
            .chain(staged)
            .find(|(other_id, other_name)| *other_id != id && *other_name == name);
        match clash {
            Some((other, _)) => Err(ApplyError::NameInUse {
                kind: kind.into(),
                name: name.into(),
                id: other.into(),
            }),
            None => Ok(()),
        }
    }

    fn remember(&mut self, request_id: &str) {
        if request_id.is_empty() {
            return;
        }
        self.recent_requests.push_back(request_id.to_string());
        self.recent_set.insert(request_id.to_string());
        while self.recent_requests.len() > REMEMBERED_REQUESTS {
            if let Some(old) = self.recent_requests.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    /// (version, created_at) of a stored object, without copying it; `None`: not stored.
    fn peek_meta(&self, kind: &str, id: &str) -> Option<(u64, Option<i64>)> {
        fn of(meta: &Option<Meta>) -> (u64, Option<i64>) {
            (
                meta.as_ref().map(|m| m.version).unwrap_or(0),
                meta.as_ref().map(|m| m.created_at),
            )
        }
        match kind {
            "cluster" => self
                .cluster
                .as_ref()
                .filter(|c| c.id == id)
                .map(|c| of(&c.meta)),
            "node" => self.nodes.get(id).map(|o| of(&o.meta)),
            "service" => self.services.get(id).map(|o| of(&o.meta)),
            "task" => self.tasks.get(id).map(|o| of(&o.meta)),
            "stack" => self.stacks.get(id).map(|o| of(&o.meta)),
            "network" => self.networks.get(id).map(|o| of(&o.meta)),
            "secret" | "config" => self
                .secrets
                .get(id)
                .filter(|o| secret_kind_name(o) == kind)
                .map(|o| of(&o.meta)),
            _ => None,
        }
    }

    fn put(&mut self, object: Object) {
        if let Some(name) = name_of(&object) {
            let (kind, id) = (kind_of(&object), id_of(&object).to_string());
            self.unname(kind, &id);
            self.names
                .entry((kind, name.to_string()))
                .or_default()
                .insert(id);
        }
        match object {
            Object::Cluster(o) => self.cluster = Some(o),
            Object::Node(o) => {
                self.nodes.insert(o.id.clone(), o);
            }
            Object::Service(o) => {
                self.services.insert(o.id.clone(), *o);
            }
            Object::Task(mut o) => {
                self.share_spec(&mut o);
                self.index_task(&o);
                if let Some(old) = self.tasks.insert(o.id.clone(), Box::new(o)) {
                    let moved = self.tasks.get(&old.id).map(|t| t.node_id != old.node_id);
                    if moved == Some(true) {
                        self.unindex_task(&old);
                    }
                }
            }
            Object::Stack(o) => {
                self.stacks.insert(o.id.clone(), o);
            }
            Object::Network(o) => {
                self.networks.insert(o.id.clone(), o);
            }
            Object::Secret(o) => {
                self.secrets.insert(o.id.clone(), o);
            }
        }
    }

    fn remove(&mut self, kind: &str, id: &str) {
        self.unname(kind, id);
        match kind {
            "cluster" => self.cluster = None,
            "node" => {
                self.nodes.remove(id);
            }
            "service" => {
                self.services.remove(id);
            }
            "task" => {
                if let Some(old) = self.tasks.remove(id) {
                    self.unindex_task(&old);
                }
            }
            "stack" => {
                self.stacks.remove(id);
            }
            "network" => {
                self.networks.remove(id);
            }
            "secret" | "config" => {
                self.secrets.remove(id);
            }
            _ => {}
        }
    }

    /// Forgets the name of the stored object `id` of `kind` (before it is replaced or
    /// removed); nothing for kinds without names.
    fn unname(&mut self, kind: &str, id: &str) {
        let name = |spec: Option<&str>| spec.unwrap_or("").to_string();
        let old = match kind {
            "service" => self
                .services
                .get(id)
                .map(|o| ("service", name(o.spec.as_ref().map(|s| s.name.as_str())))),
            "network" => self
                .networks
                .get(id)
                .map(|o| ("network", name(o.spec.as_ref().map(|s| s.name.as_str())))),
            "secret" | "config" => self.secrets.get(id).map(|o| {
                let spec = o.spec.as_ref().map(|s| s.name.as_str());
                (secret_kind_name(o), name(spec))
            }),
            _ => None,
        };
        let Some(key) = old else { return };
        if let Some(ids) = self.names.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.names.remove(&key);
            }
        }
    }

    /// The whole state, for a Raft snapshot.
    pub fn to_snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            cluster: self.cluster.clone(),
            nodes: self.nodes.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            tasks: self.tasks.values().map(|t| Task::clone(t)).collect(),
            recent_request_ids: self.recent_requests.iter().cloned().collect(),
            stacks: self.stacks.values().cloned().collect(),
            networks: self.networks.values().cloned().collect(),
            secrets: self.secrets.values().cloned().collect(),
        }
    }

    pub fn from_snapshot(snapshot: StoreSnapshot) -> State {
        let mut state = State {
            cluster: snapshot.cluster,
            ..State::default()
        };
        for n in snapshot.nodes {
            state.nodes.insert(n.id.clone(), n);
        }
        for s in snapshot.services {
            state.put(Object::Service(Box::new(s)));
        }
        for mut t in snapshot.tasks {
            state.share_spec(&mut t);
            state.index_task(&t);
            state.tasks.insert(t.id.clone(), Box::new(t));
        }
        for s in snapshot.stacks {
            state.stacks.insert(s.id.clone(), s);
        }
        for n in snapshot.networks {
            state.put(Object::Network(n));
        }
        for s in snapshot.secrets {
            state.put(Object::Secret(s));
        }
        for r in snapshot.recent_request_ids {
            state.remember(&r);
        }
        state
    }

    /// A service by id, unique id prefix, or name (Docker's lookup order).
    pub fn find_service(&self, key: &str) -> Result<&Service, ApplyError> {
        if let Some(s) = self.services.get(key) {
            return Ok(s);
        }
        // By name: the index, or a scan where the state was built outside `apply` (tests).
        let named = self
            .names
            .get(&("service", key.to_string()))
            .and_then(|ids| ids.iter().find_map(|id| self.services.get(id)));
        if let Some(s) = named.or_else(|| {
            self.services
                .values()
                .find(|s| s.spec.as_ref().is_some_and(|sp| sp.name == key))
        }) {
            return Ok(s);
        }
        let mut by_prefix = self.services.values().filter(|s| s.id.starts_with(key));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(s), None) if !key.is_empty() => Ok(s),
            (Some(_), Some(_)) => Err(ApplyError::Invalid(format!(
                "service id prefix {key:?} is ambiguous: give more characters"
            ))),
            _ => Err(ApplyError::NotFound {
                kind: "service".into(),
                id: key.into(),
            }),
        }
    }

    /// The tasks assigned to `node_id`, without scanning the others.
    pub fn tasks_on<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> {
        self.tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id).map(|t| &**t))
    }

    /// Points the task's spec at the one its (service, spec version) shares, if equal: a
    /// hundred thousand replicas then hold one spec, not a copy each.
    fn share_spec(&mut self, task: &mut Task) {
        let Some(spec) = task.spec.as_mut() else {
            return;
        };
        let key = (task.service_id.clone(), task.spec_version);
        match self.task_specs.get(&key) {
            Some(shared) if SharedSpec::ptr_eq(shared, spec) => {}
            Some(shared) if **shared == **spec => *spec = shared.clone(),
            // New, or (a hand-made task) another spec under the same key: it starts the
            // sharing from now on; tasks that hold the older one keep it.
            _ => {
                self.task_specs.insert(key, spec.clone());
                self.prune_specs();
            }
        }
    }

    /// Forgets the shared specs no task holds any more, once there are twice as many as
    /// after the last pruning (so the cost is spread over the insertions).
    fn prune_specs(&mut self) {
        if self.task_specs.len() <= 2 * self.task_specs_pruned + 16 {
            return;
        }
        self.task_specs
            .retain(|_, spec| SharedSpec::holders(spec) > 1);
        self.task_specs_pruned = self.task_specs.len();
    }

    fn index_task(&mut self, task: &Task) {
        if !task.node_id.is_empty() {
            self.tasks_by_node
                .entry(task.node_id.clone())
                .or_default()
                .insert(task.id.clone());
        }
    }

    fn unindex_task(&mut self, task: &Task) {
        if let Some(ids) = self.tasks_by_node.get_mut(&task.node_id) {
            ids.remove(&task.id);
            if ids.is_empty() {
                self.tasks_by_node.remove(&task.node_id);
            }
        }
    }

    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> {
        self.tasks
            .values()
            .map(|t| &**t)
            .filter(move |t| t.service_id == service_id)
    }
}

/// Builders for commands, so callers don't spell out the nested proto wrappers.
pub fn change(kind: ChangeKind, object: Object) -> StoreChange {
    StoreChange {
        kind: kind as i32,
        object: Some(StoreObject {
            object: Some(object),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{SecretKind, SecretSpec, ServiceSpec, TaskState};

    fn service(id: &str, name: &str) -> Object {
        Object::Service(Box::new(Service {
            id: id.into(),
            meta: None,
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn cmd(request_id: &str, changes: Vec<StoreChange>) -> StoreCommand {
        StoreCommand {
            request_id: request_id.into(),
            changes,
            timestamp: 1000,
        }
    }

    #[test]
    fn create_sets_version_to_log_index() {
        let mut s = State::default();
        let (applied, events) = s
            .apply(
                7,
                cmd("r1", vec![change(ChangeKind::Create, service("a", "web"))]),
            )
            .expect("applies");
        assert_eq!(applied.version, 7);
        assert_eq!(events.len(), 1);
        assert_eq!(s.services["a"].meta.as_ref().map(|m| m.version), Some(7));
    }

    #[test]
    fn duplicate_name_is_rejected_and_changes_nothing() {
        let mut s = State::default();
        s.apply(
            1,
            cmd("r1", vec![change(ChangeKind::Create, service("a", "web"))]),
        )
        .expect("applies");
        let task = Object::Task(Task {
            id: "t".into(),
            ..Default::default()
        });
        let err = s
            .apply(
                2,
                cmd(
                    "r2",
                    vec![
                        change(ChangeKind::Create, task),
                        change(ChangeKind::Create, service("b", "web")),
                    ],
                ),
            )
            .expect_err("name clash");
        assert!(matches!(err, ApplyError::NameInUse { .. }));
        assert!(s.tasks.is_empty(), "a rejected command must not half-apply");
    }

    /// The name index follows renames, deletions and snapshots, and keeps secrets and
    /// configs apart.
    #[test]
    fn names_are_freed_by_rename_and_delete_and_survive_a_snapshot() {
        let secret = |id: &str, name: &str, kind: SecretKind| {
            Object::Secret(Secret {
                id: id.into(),
                meta: None,
                spec: Some(SecretSpec {
                    name: name.into(),
                    kind: kind as i32,
                    ..Default::default()
                }),
            })
        };
        let create = |o| vec![change(ChangeKind::Create, o)];
        let clash = |s: &mut State, index, o| {
            let err = s.apply(index, cmd(&format!("c{index}"), create(o)));
            matches!(err, Err(ApplyError::NameInUse { .. }))
        };
        let mut s = State::default();
        s.apply(1, cmd("r1", create(service("a", "web"))))
            .expect("applies");
        s.apply(2, cmd("r2", create(secret("s", "key", SecretKind::Secret))))
            .expect("applies");
        // A config may share a secret's name, a second secret may not.
        s.apply(3, cmd("r3", create(secret("c", "key", SecretKind::Config))))
            .expect("a config has names of its own");
        assert!(clash(&mut s, 4, secret("s2", "key", SecretKind::Secret)));
        // Renamed: the old name is free, the new one taken.
        let mut renamed = s.services["a"].clone();
        renamed.spec.get_or_insert_with(Default::default).name = "api".into();
        s.apply(
            5,
            cmd(
                "r5",
                vec![change(
                    ChangeKind::Update,
                    Object::Service(Box::new(renamed)),
                )],
            ),
        )
        .expect("renames");
        assert!(clash(&mut s, 6, service("b", "api")));
        s.apply(7, cmd("r7", create(service("b", "web"))))
            .expect("the old name is free");
        // Restored from a snapshot, the names are still known.
        let mut restored = State::from_snapshot(s.to_snapshot());
        assert!(clash(&mut restored, 8, service("c", "web")));
        // Deleted: the name is free again.
        restored
            .apply(
                9,
                cmd("r9", vec![change(ChangeKind::Delete, service("b", ""))]),
            )
            .expect("deletes");
        restored
            .apply(10, cmd("r10", create(service("c", "web"))))
            .expect("the deleted service's name is free");
    }

    #[test]
    fn update_is_compare_and_set() {
        let mut s = State::default();
        s.apply(
            1,
            cmd("r1", vec![change(ChangeKind::Create, service("a", "web"))]),
        )
        .expect("applies");
        let mut stale = s.services["a"].clone();
        stale.meta = Some(Meta {
            version: 0,
            ..Default::default()
        });
        let err = s
            .apply(
                2,
                cmd(
                    "r2",
                    vec![change(ChangeKind::Update, Object::Service(Box::new(stale)))],
                ),
            )
            .expect_err("stale version");
        assert!(matches!(err, ApplyError::Conflict { actual: 1, .. }));
        let fresh = s.services["a"].clone();
        s.apply(
            3,
            cmd(
                "r3",
                vec![change(ChangeKind::Update, Object::Service(Box::new(fresh)))],
            ),
        )
        .expect("current version applies");
        assert_eq!(s.services["a"].meta.as_ref().map(|m| m.version), Some(3));
        assert_eq!(
            s.services["a"].meta.as_ref().map(|m| m.created_at),
            Some(1000)
        );
    }

    #[test]
    fn tasks_are_indexed_by_node_through_moves_deletes_and_snapshots() {
        let mut s = State::default();
        let task = |id: &str, node: &str| Task {
            id: id.into(),
            node_id: node.into(),
            ..Default::default()
        };
        let ids = |s: &State, node: &str| -> Vec<String> {
            s.tasks_on(node).map(|t| t.id.clone()).collect()
        };
        s.apply(
            1,
            cmd(
                "r1",
                vec![
                    change(ChangeKind::Create, Object::Task(task("a", ""))),
                    change(ChangeKind::Create, Object::Task(task("b", "n1"))),
                ],
            ),
        )
        .expect("applies");
        assert_eq!(ids(&s, "n1"), ["b"]);
        let mut a = Task::clone(&s.tasks["a"]);
        a.node_id = "n1".into();
        let mut b = Task::clone(&s.tasks["b"]);
        b.node_id = "n2".into();
        s.apply(
            2,
            cmd(
                "r2",
                vec![
                    change(ChangeKind::Update, Object::Task(a)),
                    change(ChangeKind::Update, Object::Task(b)),
                ],
            ),
        )
        .expect("applies");
        assert_eq!(ids(&s, "n1"), ["a"]);
        assert_eq!(ids(&s, "n2"), ["b"]);
        let back = State::from_snapshot(s.to_snapshot());
        assert_eq!(ids(&back, "n2"), ["b"]);
        s.apply(
            3,
            cmd(
                "r3",
                vec![change(ChangeKind::Delete, Object::Task(task("b", "")))],
            ),
        )
        .expect("applies");
        assert!(ids(&s, "n2").is_empty());
    }

    #[test]
    fn retried_request_applies_once() {
        let mut s = State::default();
        let c = cmd(
            "same",
            vec![change(ChangeKind::Create, service("a", "web"))],
        );
        s.apply(1, c.clone()).expect("applies");
        let (applied, events) = s.apply(2, c).expect("duplicate is not an error");
        assert!(applied.duplicate);
        assert!(events.is_empty());
    }

    #[test]
    fn snapshot_round_trips() {
        let mut s = State::default();
        let task = Task {
            id: "t1".into(),
            desired_state: TaskState::Running as i32,
            ..Default::default()
        };
        s.apply(
            1,
            cmd(
                "r1",
                vec![
                    change(ChangeKind::Create, service("a", "web")),
                    change(ChangeKind::Upsert, Object::Task(task)),
                ],
            ),
        )
        .expect("applies");
        let back = State::from_snapshot(s.to_snapshot());
        assert_eq!(back.services, s.services);
        assert_eq!(back.tasks, s.tasks);
        assert!(back.recent_set.contains("r1"));
    }

    #[test]
    fn tasks_of_one_service_version_share_their_spec() {
        use prost::Message;
        let spec = |name: &str| {
            Some(SharedSpec::new(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }))
        };
        let task = |id: &str, version: u64, name: &str| Task {
            id: id.into(),
            service_id: "s".into(),
            spec_version: version,
            spec: spec(name),
            ..Default::default()
        };
        // As the log hands them over: decoded, each with its own copy.
        let decoded = |c: StoreCommand| StoreCommand::decode(c.encode_to_vec().as_slice());
        let mut s = State::default();
        for (i, t) in [
            task("a", 1, "web"),
            task("b", 1, "web"),
            task("c", 2, "web2"),
            task("d", 1, "hand-made"),
        ]
        .into_iter()
        .enumerate()
        {
            let c = cmd(
                &format!("r{i}"),
                vec![change(ChangeKind::Create, Object::Task(t))],
            );
            s.apply(i as u64 + 1, decoded(c).expect("decodes"))
                .expect("applies");
        }
        let spec_of = |id: &str| s.tasks[id].spec.clone().expect("a spec");
        assert!(SharedSpec::ptr_eq(&spec_of("a"), &spec_of("b")));
        assert!(!SharedSpec::ptr_eq(&spec_of("a"), &spec_of("c")));
        assert_eq!(spec_of("c").name, "web2");
        // Another spec under a key already shared is kept as it came.
        assert_eq!(spec_of("d").name, "hand-made");
        assert_eq!(spec_of("a").name, "web");
        let back = State::from_snapshot(
            StoreSnapshot::decode(s.to_snapshot().encode_to_vec().as_slice()).expect("decodes"),
        );
        assert_eq!(back.tasks, s.tasks);
        let spec_of = |id: &str| back.tasks[id].spec.clone().expect("a spec");
        assert!(SharedSpec::ptr_eq(&spec_of("a"), &spec_of("b")));
    }

    #[test]
    fn find_service_by_name_and_prefix() {
        let mut s = State::default();
        s.apply(
            1,
            cmd(
                "r1",
                vec![change(ChangeKind::Create, service("abc123", "web"))],
            ),
        )
        .expect("applies");
        assert_eq!(s.find_service("web").map(|x| x.id.as_str()), Ok("abc123"));
        assert_eq!(s.find_service("abc").map(|x| x.id.as_str()), Ok("abc123"));
        assert!(s.find_service("zzz").is_err());
    }

    fn task_on(id: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            status: Some(shoal_proto::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The stored task with a change applied, as a writer would send it (version as read).
    fn edited(s: &State, id: &str, edit: impl FnOnce(&mut Task)) -> Object {
        let mut t = Task::clone(&s.tasks[id]);
        edit(&mut t);
        Object::Task(t)
    }

    fn task_events(events: &[Event]) -> Vec<TaskEvent> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Task(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn task_events_tell_status_reports_from_other_changes() {
        let mut s = State::default();
        let (_, events) = s
            .apply(
                1,
                cmd(
                    "r1",
                    vec![change(
                        ChangeKind::Create,
                        Object::Task(task_on("t", "", TaskState::Pending)),
                    )],
                ),
            )
            .expect("created");
        assert_eq!(task_events(&events)[0].change, TaskChange::Written);

        let assign = edited(&s, "t", |t| {
            t.node_id = "n1".into();
            t.status = task_on("", "", TaskState::Assigned).status;
        });
        let (_, events) = s
            .apply(2, cmd("r2", vec![change(ChangeKind::Update, assign)]))
            .expect("assigned");
        let event = &task_events(&events)[0];
        assert_eq!(
            event.change,
            TaskChange::Written,
            "a new node is more than a status"
        );
        assert_eq!(event.node_id, "n1");
        assert_eq!(event.previous_node_id.as_deref(), Some(""));

        let report = edited(&s, "t", |t| {
            t.status = task_on("", "", TaskState::Running).status;
        });
        let (_, events) = s
            .apply(3, cmd("r3", vec![change(ChangeKind::Update, report)]))
            .expect("reported");
        let event = &task_events(&events)[0];
        assert_eq!(event.change, TaskChange::Status(TaskState::Running));
        assert_eq!(
            (event.node_id.as_str(), &event.previous_node_id),
            ("n1", &None)
        );

        let stop = edited(&s, "t", |t| t.set_desired_state(TaskState::Shutdown));
        let (_, events) = s
            .apply(4, cmd("r4", vec![change(ChangeKind::Update, stop)]))
            .expect("stopped");
        assert_eq!(task_events(&events)[0].change, TaskChange::Written);

        let gone = Object::Task(Task {
            id: "t".into(),
            ..Default::default()
        });
        let (_, events) = s
            .apply(5, cmd("r5", vec![change(ChangeKind::Delete, gone)]))
            .expect("deleted");
        let event = &task_events(&events)[0];
        assert_eq!(event.change, TaskChange::Deleted);
        assert_eq!(
            event.node_id, "n1",
            "a deletion names the node the task was on"
        );
    }

    #[test]
    fn a_command_sees_its_own_earlier_changes() {
        let mut s = State::default();
        let created = task_on("t", "", TaskState::Pending);
        let mut assigned = task_on("t", "n1", TaskState::Assigned);
        // The version the create gives it: the entry's index.
        assigned.meta = Some(Meta {
            version: 9,
            ..Default::default()
        });
        let (_, events) = s
            .apply(
                9,
                cmd(
                    "r1",
                    vec![
                        change(ChangeKind::Create, Object::Task(created.clone())),
                        change(ChangeKind::Update, Object::Task(assigned)),
                    ],
                ),
            )
            .expect("create then update in one command");
        assert_eq!(s.tasks["t"].node_id, "n1");
        assert_eq!(s.tasks["t"].meta.as_ref().map(|m| m.created_at), Some(1000));
        assert_eq!(task_events(&events).len(), 2);
        let again = s
            .apply(
                10,
                cmd(
                    "r2",
                    vec![
                        change(
                            ChangeKind::Create,
                            Object::Task(task_on("u", "", TaskState::New)),
                        ),
                        change(
                            ChangeKind::Create,
                            Object::Task(task_on("u", "", TaskState::New)),
                        ),
                    ],
                ),
            )
            .expect_err("the same task created twice in one command");
        assert!(matches!(again, ApplyError::AlreadyExists { .. }));
        assert!(
            !s.tasks.contains_key("u"),
            "a rejected command must not half-apply"
        );
    }

    #[test]
    fn a_command_of_many_changes_applies_them_all() {
        let mut s = State::default();
        let changes = (0..20_000)
            .map(|i| {
                change(
                    ChangeKind::Create,
                    Object::Task(task_on(&format!("t{i}"), "", TaskState::Pending)),
                )
            })
            .collect();
        let (_, events) = s.apply(1, cmd("r1", changes)).expect("applies");
        assert_eq!(s.tasks.len(), 20_000);
        assert_eq!(events.len(), 20_000);
    }
}
