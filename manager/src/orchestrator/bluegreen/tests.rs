//! The blue-green rules, step by step, on a small simulated store: every pass is the real
//! orchestrator entry ([`super::super::reconcile`]), its plan applied as the store would.

use std::collections::BTreeMap;

use shoal_proto::service_spec::Mode;
use shoal_proto::{
    BlueGreenPhase, ContainerSpec, GlobalService, Meta, Node, NodeState, NodeStatus, PromoteMode,
    ReplicatedService, Service, ServiceSpec, Task, TaskState, TaskStatus, UpdateConfig,
    UpdateFailureAction, UpdateState, UpdateStatus, UpdateStrategy,
};

use super::*;
use crate::orchestrator::{reconcile, ReconcileInput};

fn config(promote: PromoteMode, action: UpdateFailureAction) -> UpdateConfig {
    let mut c = UpdateConfig {
        monitor_ms: Some(1_000),
        keep_blue_ms: Some(10_000),
        drain_ms: Some(300),
        ..Default::default()
    };
    c.set_strategy(UpdateStrategy::BlueGreen);
    c.set_promote(promote);
    c.set_failure_action(action);
    c
}

fn spec(version: &str, replicas: u64, c: &UpdateConfig) -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        container: Some(ContainerSpec {
            image: "busybox".into(),
            env: vec![format!("VERSION={version}")],
            ..Default::default()
        }),
        mode: Some(Mode::Replicated(ReplicatedService { replicas })),
        update_config: Some(c.clone()),
        ..Default::default()
    }
}

struct Sim {
    service: Service,
    tasks: BTreeMap<String, Task>,
    nodes: Vec<Node>,
    now: i64,
    next_id: usize,
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Sim {
    /// A service of `replicas` v1 tasks, all running and in rotation.
    fn new(replicas: u64, c: UpdateConfig) -> Sim {
        let mut sim = Sim {
            service: Service {
                id: "svc".into(),
                meta: Some(Meta {
                    version: 1,
                    ..Default::default()
                }),
                spec: Some(spec("v1", replicas, &c)),
                ..Default::default()
            },
            tasks: BTreeMap::new(),
            nodes: vec![node("n1")],
            now: 1_000,
            next_id: 0,
        };
        sim.settle();
        sim.run_all();
        sim.settle();
        assert_eq!(sim.serving(), vec!["v1"; replicas as usize]);
        sim
    }

    fn pass(&mut self) -> Plan {
        let tasks: Vec<Task> = self.tasks.values().cloned().collect();
        let mut n = self.next_id;
        let plan = reconcile(
            &ReconcileInput {
                service: Some(&self.service),
                service_id: "svc",
                tasks: &tasks,
                nodes: &self.nodes,
                now: self.now,
            },
            &mut || {
                n += 1;
                format!("t{n:03}")
            },
        );
        self.next_id = n;
        self.apply(&plan);
        plan
    }

    fn apply(&mut self, plan: &Plan) {
        for t in &plan.update {
            assert!(self.tasks.contains_key(&t.id), "update of unknown {}", t.id);
            self.tasks.insert(t.id.clone(), t.clone());
        }
        for id in &plan.delete {
            self.tasks.remove(id);
        }
        for t in &plan.create {
            let mut t = t.clone();
            t.node_id = "n1".into();
            t.meta = Some(Meta {
                version: 1,
                created_at: self.now,
                updated_at: self.now,
            });
            self.tasks.insert(t.id.clone(), t);
        }
        if let Some(s) = plan.services.iter().find(|s| s.id == self.service.id) {
            self.service = s.clone();
            if let Some(m) = self.service.meta.as_mut() {
                m.version += 1;
            }
        }
    }

    /// Passes until nothing changes (at most 10).
    fn settle(&mut self) {
        for _ in 0..10 {
            if self.pass().is_empty() {
                return;
            }
        }
        panic!("the orchestrator did not settle");
    }

    fn set_state(&mut self, id: &str, state: TaskState) {
        let now = self.now;
        let t = self.tasks.get_mut(id).expect("task");
        let mut st = TaskStatus {
            timestamp: now,
            ..t.status.clone().unwrap_or_default()
        };
        st.set_state(state);
        t.status = Some(st);
    }

    /// What the agents do: start what is wanted, stop what is not.
    fn run_all(&mut self) {
        let ids: Vec<(String, TaskState, TaskState)> = self
            .tasks
            .values()
            .map(|t| (t.id.clone(), t.desired_state(), status_state(t)))
            .collect();
        for (id, desired, state) in ids {
            if desired == TaskState::Running && state < TaskState::Running {
                self.set_state(&id, TaskState::Running);
            } else if desired != TaskState::Running && !state.is_terminal() {
                self.set_state(&id, TaskState::Shutdown);
            }
        }
    }

    fn version_of(t: &Task) -> String {
        t.spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map(|c| c.env.join(""))
            .unwrap_or_default()
            .trim_start_matches("VERSION=")
            .to_string()
    }

    fn live(&self) -> Vec<&Task> {
        self.tasks
            .values()
            .filter(|t| t.desired_state() == TaskState::Running && !status_state(t).is_terminal())
            .collect()
    }

    /// Versions of the running tasks in rotation: what gets traffic.
    fn serving(&self) -> Vec<String> {
        self.live()
            .into_iter()
            .filter(|t| !t.out_of_rotation && status_state(t) == TaskState::Running)
            .map(Self::version_of)
            .collect()
    }

    /// Versions of the live tasks held out of rotation.
    fn held(&self) -> Vec<String> {
        self.live()
            .into_iter()
            .filter(|t| t.out_of_rotation)
            .map(Self::version_of)
            .collect()
    }

    fn of_version(&self, v: &str) -> Vec<String> {
        self.live()
            .into_iter()
            .filter(|t| Self::version_of(t) == v)
            .map(|t| t.id.clone())
            .collect()
    }

    fn status(&self) -> UpdateStatus {
        self.service.update_status.clone().unwrap_or_default()
    }

    /// `service update` to `version` (UpdateService's rules).
    fn update(&mut self, version: &str, c: UpdateConfig) {
        let replicas = match self.service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(Mode::Replicated(r)) => r.replicas,
            _ => 0,
        };
        let mut new = spec(version, replicas, &c);
        new.mode = self.service.spec.as_ref().and_then(|s| s.mode);
        self.service.previous_spec = self.service.spec.replace(new);
        self.service.update_status = None;
        if let Some(m) = self.service.meta.as_mut() {
            m.version += 1;
        }
    }

    /// `service rollback` (UpdateService's rules).
    fn rollback(&mut self) {
        let previous = self.service.previous_spec.take();
        self.service.previous_spec = std::mem::replace(&mut self.service.spec, previous);
        let mut st = UpdateStatus {
            started_at: self.now,
            message: "manually requested rollback".into(),
            ..Default::default()
        };
        st.set_state(UpdateState::RollbackStarted);
        self.service.update_status = Some(st);
        if let Some(m) = self.service.meta.as_mut() {
            m.version += 1;
        }
    }
}

fn auto() -> UpdateConfig {
    config(PromoteMode::Auto, UpdateFailureAction::Rollback)
}

#[test]
fn green_starts_out_of_rotation_then_takes_all_traffic_at_once() {
    let mut sim = Sim::new(3, auto());
    sim.now = 2_000;
    sim.update("v2", auto());
    sim.settle();
    // Green at full count beside blue, out of rotation; blue untouched.
    assert_eq!(sim.held(), vec!["v2"; 3]);
    assert_eq!(sim.serving(), vec!["v1"; 3]);
    let st = sim.status();
    assert_eq!(
        (st.state(), st.phase()),
        (UpdateState::Updating, BlueGreenPhase::Deploying)
    );
    assert_eq!(
        st.message,
        "starting green beside blue, out of rotation: 0 of 3 ready"
    );

    // Two of three run: still nothing switches.
    let green = sim.of_version("v2");
    sim.now = 2_100;
    sim.set_state(&green[0], TaskState::Running);
    sim.set_state(&green[1], TaskState::Running);
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"; 3]);
    assert!(sim.status().message.contains("2 of 3 ready"));

    // The last one runs: the switch, in one plan.
    sim.now = 2_200;
    sim.set_state(&green[2], TaskState::Running);
    let plan = sim.pass();
    assert_eq!(
        plan.update.len(),
        6,
        "three in, three out: {:?}",
        plan.update
    );
    assert!(plan.create.is_empty());
    assert_eq!(sim.serving(), vec!["v2"; 3]);
    assert_eq!(sim.held(), vec!["v1"; 3], "blue is kept, out of rotation");
    let st = sim.status();
    assert_eq!(st.phase(), BlueGreenPhase::Switched);
    assert_eq!((st.state(), st.switched_at), (UpdateState::Updating, 2_200));
    assert_eq!(plan.wake_at, Some(3_200), "the monitor window's end");
    assert!(sim.pass().is_empty(), "idempotent");

    // The monitor window passes: completed, blue still kept.
    sim.now = 3_200;
    let plan = sim.pass();
    assert_eq!(sim.status().state(), UpdateState::Completed);
    assert_eq!(plan.wake_at, Some(12_200), "the keep window's end");
    assert_eq!(sim.held(), vec!["v1"; 3]);

    // The keep window passes: blue goes, with the drain stamped.
    sim.now = 12_200;
    let plan = sim.pass();
    assert_eq!(plan.update.len(), 3);
    assert!(plan
        .update
        .iter()
        .all(|t| t.desired_state() == TaskState::Shutdown && t.drain_ms == Some(300)));
    assert_eq!(sim.status().phase(), BlueGreenPhase::Done);
    assert_eq!(
        sim.status().message,
        "update completed: green serves; blue removed"
    );
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v2"; 3]);
    assert!(sim.held().is_empty());
}

#[test]
fn manual_promotion_waits_for_promote() {
    let manual = config(PromoteMode::Manual, UpdateFailureAction::Rollback);
    let mut sim = Sim::new(2, manual.clone());
    assert!(promote(&sim.service).is_err(), "nothing to promote yet");
    sim.update("v2", manual);
    sim.settle();
    sim.run_all();
    sim.settle();
    let st = sim.status();
    assert_eq!(st.phase(), BlueGreenPhase::Ready);
    assert_eq!(
        st.message,
        "green ready (2 tasks, out of rotation): switch with `shoal service promote web`"
    );
    assert_eq!(sim.serving(), vec!["v1"; 2]);
    sim.now += 60_000;
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"; 2], "it waits as long as it takes");

    let promoted = promote(&sim.service)
        .expect("promotable")
        .expect("a change");
    sim.service = promoted;
    assert_eq!(promote(&sim.service), Ok(None), "asked already");
    sim.pass();
    assert_eq!(sim.serving(), vec!["v2"; 2]);
    assert_eq!(sim.status().phase(), BlueGreenPhase::Switched);
    assert!(!sim.status().promote_requested);
    assert_eq!(promote(&sim.service), Ok(None), "switched already");
}

#[test]
fn a_failing_green_never_gets_traffic_and_rolls_back_leaving_blue_untouched() {
    let mut sim = Sim::new(2, auto());
    let blue: Vec<Task> = sim.live().into_iter().cloned().collect();
    sim.update("v2", auto());
    sim.settle();
    let green = sim.of_version("v2");
    sim.now += 500;
    sim.set_state(&green[0], TaskState::Running);
    sim.set_state(&green[1], TaskState::Failed);
    let plan = sim.pass();
    assert!(plan.create.is_empty(), "nothing made from the failed spec");
    assert!(plan
        .update
        .iter()
        .all(|t| green.contains(&t.id) && t.desired_state() == TaskState::Shutdown));
    let st = sim.status();
    assert_eq!(
        (st.state(), st.phase()),
        (UpdateState::RollbackCompleted, BlueGreenPhase::Done)
    );
    assert!(
        st.message.starts_with(&format!(
            "blue-green update rolled back before the switch: green task {}",
            green[1]
        )),
        "{}",
        st.message
    );
    assert_eq!(
        SimVersion::of(sim.service.spec.as_ref()),
        "v1",
        "the spec is back"
    );
    assert_eq!(SimVersion::of(sim.service.previous_spec.as_ref()), "v2");
    sim.run_all();
    sim.settle();
    // Blue's tasks are exactly the ones it had, never rewritten.
    let now: Vec<Task> = sim.live().into_iter().cloned().collect();
    assert_eq!(now, blue);
}

struct SimVersion;
impl SimVersion {
    fn of(spec: Option<&ServiceSpec>) -> String {
        spec.and_then(|s| s.container.as_ref())
            .map(|c| c.env.join(""))
            .unwrap_or_default()
            .trim_start_matches("VERSION=")
            .to_string()
    }
}

#[test]
fn pause_holds_green_out_of_rotation() {
    let pause = config(PromoteMode::Auto, UpdateFailureAction::Pause);
    let mut sim = Sim::new(2, pause.clone());
    sim.update("v2", pause);
    sim.settle();
    let green = sim.of_version("v2");
    sim.set_state(&green[0], TaskState::Failed);
    sim.pass();
    let st = sim.status();
    assert_eq!(
        (st.state(), st.phase()),
        (UpdateState::Paused, BlueGreenPhase::Deploying)
    );
    assert!(st.message.contains("blue keeps serving"), "{}", st.message);
    // The restart policy replaces the failed task (after its delay); even once all of green
    // runs, no switch.
    sim.now += 6_000;
    sim.settle();
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"; 2]);
    assert_eq!(sim.held(), vec!["v2"; 2]);
    assert!(promote(&sim.service).is_err());
    // `service rollback` removes green.
    sim.rollback();
    sim.settle();
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"; 2]);
    assert!(sim.held().is_empty());
    assert_eq!(sim.status().state(), UpdateState::RollbackCompleted);
}

#[test]
fn verification_gates_the_switch() {
    let mut c = auto();
    c.verify = vec!["CMD-SHELL".into(), "true".into()];
    let mut sim = Sim::new(2, auto());
    sim.update("v2", c);
    sim.settle();
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"; 2], "running is not verified");
    let green = sim.of_version("v2");
    for id in &green {
        let t = sim.tasks.get_mut(id).expect("task");
        if let Some(s) = t.status.as_mut() {
            s.verify = VERIFY_PASSED.into();
        }
    }
    sim.pass();
    assert_eq!(sim.serving(), vec!["v2"; 2]);

    // A failed verification is a failure: the update rolls back.
    let mut c = auto();
    c.verify = vec!["CMD-SHELL".into(), "false".into()];
    sim.update("v3", c);
    sim.settle();
    sim.run_all();
    let v3 = sim.of_version("v3");
    let t = sim.tasks.get_mut(&v3[0]).expect("task");
    if let Some(s) = t.status.as_mut() {
        s.verify = VERIFY_FAILED.into();
        s.verify_output = "exit 1".into();
    }
    sim.pass();
    let st = sim.status();
    assert_eq!(st.state(), UpdateState::RollbackCompleted);
    assert!(
        st.message.contains("verification failed: exit 1"),
        "{}",
        st.message
    );
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v2"; 2]);
}

#[test]
fn a_green_failure_in_the_monitor_window_sends_traffic_back_to_blue() {
    let mut sim = Sim::new(2, auto());
    sim.update("v2", auto());
    sim.settle();
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v2"; 2]);
    let green = sim.of_version("v2");
    sim.now += 400;
    sim.set_state(&green[1], TaskState::Failed);
    let plan = sim.pass();
    assert!(plan.create.is_empty());
    assert_eq!(sim.serving(), vec!["v1"; 2], "back to blue in one plan");
    let st = sim.status();
    assert_eq!(st.state(), UpdateState::RollbackCompleted);
    assert!(
        st.message.ends_with(
            "failed within the monitor window after the switch (failed): traffic back to blue"
        ),
        "{}",
        st.message
    );
    // Green was stopped out of rotation, with a drain (it served until now).
    assert!(plan
        .update
        .iter()
        .filter(|t| green.contains(&t.id))
        .all(|t| t.out_of_rotation && t.drain_ms == Some(300)));
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"; 2]);
    assert!(sim.held().is_empty());

    // An agent's report of an unhealthy, still running green counts the same.
    sim.update("v2b", auto());
    sim.settle();
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v2b"; 2]);
    let v2b = sim.of_version("v2b");
    sim.now += 100;
    let t = sim.tasks.get_mut(&v2b[0]).expect("task");
    if let Some(s) = t.status.as_mut() {
        s.health = "unhealthy".into();
        s.health_output = "exit 1".into();
        s.timestamp = sim.now;
    }
    sim.pass();
    assert_eq!(sim.serving(), vec!["v1"; 2], "back to blue");
    assert!(sim
        .status()
        .message
        .contains("(container unhealthy: exit 1): traffic back to blue"));
    sim.run_all();
    sim.settle();

    // After the monitor window a failure is the restart policy's business only.
    sim.update("v3", auto());
    sim.settle();
    sim.run_all();
    sim.settle();
    sim.now += 1_000;
    sim.settle();
    assert_eq!(sim.status().state(), UpdateState::Completed);
    let v3 = sim.of_version("v3");
    sim.set_state(&v3[0], TaskState::Failed);
    sim.settle();
    assert_eq!(SimVersion::of(sim.service.spec.as_ref()), "v3");
}

#[test]
fn rollback_after_the_switch_swaps_back_at_once_and_keeps_green() {
    let mut sim = Sim::new(3, auto());
    sim.update("v2", auto());
    sim.settle();
    sim.run_all();
    sim.settle();
    sim.now += 2_000;
    sim.settle();
    assert_eq!(sim.status().state(), UpdateState::Completed);
    let blue = sim.of_version("v1");

    sim.rollback();
    let plan = sim.pass();
    assert!(
        plan.create.is_empty(),
        "blue is still there: nothing to start"
    );
    assert_eq!(plan.update.len(), 6);
    assert_eq!(
        sim.serving(),
        vec!["v1"; 3],
        "switched back in the first pass"
    );
    assert_eq!(sim.of_version("v1"), blue, "the very same tasks");
    assert_eq!(sim.held(), vec!["v2"; 3], "green is kept in turn");
    let st = sim.status();
    assert_eq!(
        (st.state(), st.phase()),
        (UpdateState::RollbackStarted, BlueGreenPhase::Switched)
    );
    sim.now += 1_000;
    sim.settle();
    assert_eq!(sim.status().state(), UpdateState::RollbackCompleted);
    // And forth again, as instantly.
    sim.rollback();
    sim.pass();
    assert_eq!(sim.serving(), vec!["v2"; 3]);
    sim.now += 20_000;
    sim.settle();
    sim.run_all();
    sim.settle();
    assert!(sim.held().is_empty(), "kept ones go after the keep window");
    assert_eq!(sim.status().phase(), BlueGreenPhase::Done);
}

#[test]
fn rollback_before_the_switch_removes_green_only() {
    let manual = config(PromoteMode::Manual, UpdateFailureAction::Rollback);
    let mut sim = Sim::new(2, manual.clone());
    let blue: Vec<Task> = sim.live().into_iter().cloned().collect();
    sim.update("v2", manual);
    sim.settle();
    sim.run_all();
    sim.settle();
    assert_eq!(sim.status().phase(), BlueGreenPhase::Ready);
    sim.rollback();
    let plan = sim.pass();
    assert!(plan.create.is_empty());
    assert_eq!(plan.update.len(), 2);
    assert!(plan
        .update
        .iter()
        .all(|t| t.desired_state() == TaskState::Shutdown));
    let st = sim.status();
    assert_eq!(
        (st.state(), st.phase()),
        (UpdateState::RollbackCompleted, BlueGreenPhase::Done)
    );
    sim.run_all();
    sim.settle();
    let now: Vec<Task> = sim.live().into_iter().cloned().collect();
    assert_eq!(now, blue);
}

#[test]
fn a_newer_update_supersedes_a_green_that_never_served() {
    let manual = config(PromoteMode::Manual, UpdateFailureAction::Rollback);
    let mut sim = Sim::new(2, manual.clone());
    sim.update("v2", manual.clone());
    sim.settle();
    sim.run_all();
    sim.settle();
    let v2 = sim.of_version("v2");
    sim.update("v3", manual);
    sim.settle();
    assert!(v2
        .iter()
        .all(|id| sim.tasks[id].desired_state() == TaskState::Shutdown));
    assert_eq!(sim.serving(), vec!["v1"; 2]);
    assert_eq!(sim.held(), vec!["v3"; 2]);
}

#[test]
fn a_new_service_and_a_scale_up_serve_at_once() {
    let mut sim = Sim::new(2, auto());
    assert!(sim.held().is_empty());
    if let Some(Mode::Replicated(r)) = sim.service.spec.as_mut().and_then(|s| s.mode.as_mut()) {
        r.replicas = 3;
    }
    sim.settle();
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"; 3]);
    assert_eq!(sim.service.update_status, None, "no rollout happened");
}

#[test]
fn blue_ending_before_the_switch_leaves_green_to_serve() {
    let manual = config(PromoteMode::Manual, UpdateFailureAction::Rollback);
    let mut sim = Sim::new(1, manual.clone());
    sim.update("v2", manual);
    sim.settle();
    sim.run_all();
    sim.settle();
    let blue = sim.of_version("v1");
    sim.set_state(&blue[0], TaskState::Failed);
    sim.settle();
    assert_eq!(sim.serving(), vec!["v2"]);
    assert_eq!(sim.status().state(), UpdateState::Completed);
}

#[test]
fn a_rolling_service_is_not_this_modules() {
    let mut sim = Sim::new(2, UpdateConfig::default());
    let tasks: Vec<Task> = sim.tasks.values().cloned().collect();
    let refs: Vec<&Task> = tasks.iter().collect();
    let node_list = sim.nodes.clone();
    let node_refs: Vec<&Node> = node_list.iter().collect();
    let nodes = Nodes::new(&node_refs);
    assert!(!applies(&sim.service, &refs, &nodes));
    sim.update("v2", auto());
    assert!(applies(&sim.service, &refs, &nodes));
}

#[test]
fn a_global_service_switches_per_node_set() {
    let mut sim = Sim::new(1, auto());
    sim.nodes = vec![node("n1")];
    if let Some(spec) = sim.service.spec.as_mut() {
        spec.mode = Some(Mode::Global(GlobalService {}));
    }
    sim.tasks.clear();
    sim.settle();
    // Global tasks come with their node.
    for t in sim.tasks.values_mut() {
        assert_eq!(t.node_id, "n1");
    }
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v1"]);
    sim.update("v2", auto());
    sim.settle();
    assert_eq!(sim.held(), vec!["v2"]);
    sim.run_all();
    sim.settle();
    assert_eq!(sim.serving(), vec!["v2"]);
    assert_eq!(sim.held(), vec!["v1"]);
}
