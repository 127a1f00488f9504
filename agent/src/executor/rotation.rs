//! The *rotation*: which of this node's tasks get traffic, through DNS (the embedded server's
//! answers) and published ports (the port layer's backends).
//!
//! A task is in rotation while it runs (and is healthy, if it has a healthcheck) and the
//! manager does not hold it out (`Task.out_of_rotation`: blue-green keeps green out before
//! the switch and blue out after it). The manager is the source of truth for the flag; the
//! agent only knows which of its tasks run.
//!
//! Every change goes through [`Rotation::sync`], which compares what should serve with what
//! serves and applies the difference in two steps: each service whose published-port backends
//! change gets its new set in one port-layer transaction (one `nft -f`), then every DNS change
//! is made under one lock of the table. So when an assignment moves a whole service from blue
//! to green (a blue-green switch), clients of this node see the old set or the new one, never
//! a mix and never nothing. A future cluster-wide VIP would take its backends from the same
//! serving set.
//!
//! Draining: the time a task left rotation is kept, so that a stopping task waits out its drain
//! period from that moment (a blue task that left at the switch long ago stops at once).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::published::PublishedPorts;
use crate::dns::DnsTable;

/// One DNS endpoint of a task: its address on one network and the names it answers to there.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `"<task id>/<network id>"`.
    pub id: String,
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub names: Vec<String>,
}

/// A running (healthy) task, as the rotation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub service_id: String,
    pub endpoints: Vec<Endpoint>,
    /// The address its service's published ports reach it at (none: no published ports, or
    /// no network they can reach).
    pub backend: Option<Ipv4Addr>,
}

/// What has to change to go from one serving set to another.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Tasks whose DNS endpoints go.
    pub leaving: Vec<String>,
    /// Endpoints that come.
    pub entering: Vec<Endpoint>,
    /// Services whose published-port backends change: their new backends, by task.
    pub backends: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.leaving.is_empty() && self.entering.is_empty() && self.backends.is_empty()
    }
}

/// The tasks that should serve: the live ones the manager does not hold. Pure.
pub fn serving(live: &HashMap<String, Member>, held: &HashSet<String>) -> HashMap<String, Member> {
    live.iter()
        .filter(|(id, _)| !held.contains(*id))
        .map(|(id, m)| (id.clone(), m.clone()))
        .collect()
}

fn backends_of(set: &HashMap<String, Member>, service: &str) -> BTreeMap<String, Ipv4Addr> {
    set.iter()
        .filter(|(_, m)| m.service_id == service)
        .filter_map(|(id, m)| Some((id.clone(), m.backend?)))
        .collect()
}

/// The changes from serving set `before` to `after`. Pure.
pub fn diff(before: &HashMap<String, Member>, after: &HashMap<String, Member>) -> Changes {
    let mut changes = Changes::default();
    let mut leaving: Vec<&String> = before
        .iter()
        .filter(|(id, m)| after.get(*id) != Some(*m))
        .map(|(id, _)| id)
        .collect();
    leaving.sort();
    changes.leaving = leaving.into_iter().cloned().collect();
    let mut entering: Vec<(&String, &Member)> = after
        .iter()
        .filter(|(id, m)| before.get(*id) != Some(*m))
        .collect();
    entering.sort_by(|a, b| a.0.cmp(b.0));
    changes.entering = entering
        .into_iter()
        .flat_map(|(_, m)| m.endpoints.iter().cloned())
        .collect();
    let services: HashSet<&str> = before
        .values()
        .chain(after.values())
        .map(|m| m.service_id.as_str())
        .collect();
    for service in services {
        let (old, new) = (backends_of(before, service), backends_of(after, service));
        if old != new {
            changes.backends.insert(service.to_string(), new);
        }
    }
    changes
}

#[derive(Default)]
struct Wanted {
    held: HashSet<String>,
    live: HashMap<String, Member>,
}

#[derive(Default)]
struct Applied {
    serving: HashMap<String, Member>,
    /// When each task that served last left rotation.
    left_at: HashMap<String, Instant>,
}

/// This node's rotation. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct Rotation {
    inner: Arc<Inner>,
}

struct Inner {
    dns: DnsTable,
    ports: PublishedPorts,
    wanted: Mutex<Wanted>,
    /// Held while changes are applied, so that syncs apply in turn, each from the latest
    /// wishes.
    applied: Mutex<Applied>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rotation {
    pub fn new(dns: DnsTable, ports: PublishedPorts) -> Rotation {
        Rotation {
            inner: Arc::new(Inner {
                dns,
                ports,
                wanted: Mutex::new(Wanted::default()),
                applied: Mutex::new(Applied::default()),
            }),
        }
    }

    /// The manager's word: every task of this node it holds out of rotation. Returns whether
    /// that changed anything (then [`Rotation::sync`]).
    pub fn set_held(&self, held: HashSet<String>) -> bool {
        let mut wanted = lock(&self.inner.wanted);
        if wanted.held == held {
            return false;
        }
        wanted.held = held;
        true
    }

    /// The task runs (and is healthy).
    pub fn join(&self, task_id: &str, member: Member) {
        lock(&self.inner.wanted)
            .live
            .insert(task_id.to_string(), member);
    }

    /// The task is about to stop (or stopped).
    pub fn leave(&self, task_id: &str) {
        lock(&self.inner.wanted).live.remove(task_id);
    }

    /// `task_id` serves, and another live task of `service_id` is held out of rotation.
    pub fn has_standby(&self, task_id: &str, service_id: &str) -> bool {
        let wanted = lock(&self.inner.wanted);
        !wanted.held.contains(task_id)
            && wanted.live.contains_key(task_id)
            && wanted.live.iter().any(|(id, m)| {
                id != task_id && m.service_id == service_id && wanted.held.contains(id)
            })
    }

    /// Applies what changed since the last sync. Blocking: the port layer runs `nft`.
    pub fn sync(&self) {
        let mut applied = lock(&self.inner.applied);
        let after = {
            let wanted = lock(&self.inner.wanted);
            serving(&wanted.live, &wanted.held)
        };
        let changes = diff(&applied.serving, &after);
        if changes.is_empty() {
            return;
        }
        for (service, backends) in &changes.backends {
            self.inner.ports.set_backends(service, backends);
        }
        let entering = changes
            .entering
            .into_iter()
            .map(|e| (e.id, e.network_id, e.ip, e.names))
            .collect();
        self.inner.dns.swap(&changes.leaving, entering);
        let now = Instant::now();
        let left: Vec<String> = applied
            .serving
            .keys()
            .filter(|id| !after.contains_key(*id))
            .cloned()
            .collect();
        for id in left {
            applied.left_at.insert(id, now);
        }
        for id in after.keys() {
            applied.left_at.remove(id);
        }
        applied.serving = after;
    }

    /// When the task last left rotation; `None` if it never served or serves now.
    pub fn left_at(&self, task_id: &str) -> Option<Instant> {
        lock(&self.inner.applied).left_at.get(task_id).copied()
    }

    /// The task is gone for good.
    pub fn forget(&self, task_id: &str) {
        lock(&self.inner.wanted).live.remove(task_id);
        lock(&self.inner.applied).left_at.remove(task_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member whose endpoint id is `<ip>/net`: give the task the id `ip` when DNS matters.
    fn member(service: &str, ip: &str, published: bool) -> Member {
        let ip: Ipv4Addr = ip.parse().expect("ip");
        Member {
            service_id: service.into(),
            endpoints: vec![Endpoint {
                id: format!("{ip}/net"),
                network_id: "net".into(),
                ip,
                names: vec![service.into()],
            }],
            backend: published.then_some(ip),
        }
    }

    #[test]
    fn held_tasks_do_not_serve() {
        let live = HashMap::from([
            ("blue".to_string(), member("web", "10.0.0.2", true)),
            ("green".to_string(), member("web", "10.0.0.3", true)),
        ]);
        let held = HashSet::from(["green".to_string()]);
        let s = serving(&live, &held);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["blue"]);
    }

    #[test]
    fn a_switch_is_one_backend_set_per_service_and_one_dns_swap() {
        let live = HashMap::from([
            ("b1".to_string(), member("web", "10.0.0.2", true)),
            ("b2".to_string(), member("web", "10.0.0.3", true)),
            ("g1".to_string(), member("web", "10.0.0.4", true)),
            ("g2".to_string(), member("web", "10.0.0.5", true)),
            ("db".to_string(), member("db", "10.0.0.9", false)),
        ]);
        let green: HashSet<String> = ["g1", "g2"].map(String::from).into();
        let blue: HashSet<String> = ["b1", "b2"].map(String::from).into();
        let before = serving(&live, &green);
        let after = serving(&live, &blue);
        let c = diff(&before, &after);
        assert_eq!(c.leaving, ["b1", "b2"]);
        assert_eq!(
            c.entering
                .iter()
                .map(|e| e.ip.to_string())
                .collect::<Vec<_>>(),
            ["10.0.0.4", "10.0.0.5"]
        );
        // Only the service whose backends change, with its whole new set.
        assert_eq!(c.backends.len(), 1);
        let web = &c.backends["web"];
        assert_eq!(web.keys().collect::<Vec<_>>(), ["g1", "g2"]);
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn a_serving_task_has_a_standby_when_a_sibling_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = crate::ports::PortManager::open_with(
            crate::ports::PortConfig {
                state_dir: dir.path().to_path_buf(),
                nft_table: "rtest".into(),
            },
            Arc::new(crate::ports::FakePortSys::new()),
        )
        .expect("a fake port layer");
        let dns = DnsTable::new();
        let r = Rotation::new(dns.clone(), PublishedPorts::new(ports));
        r.join("10.0.0.3", member("web", "10.0.0.3", true));
        r.join("10.0.0.9", member("db", "10.0.0.9", false));
        assert!(!r.has_standby("10.0.0.3", "web"));
        r.join("10.0.0.2", member("web", "10.0.0.2", true));
        r.set_held(HashSet::from(["10.0.0.2".to_string()]));
        assert!(r.has_standby("10.0.0.3", "web"));
        assert!(
            !r.has_standby("10.0.0.2", "web"),
            "a held task serves no one"
        );
        assert!(!r.has_standby("10.0.0.9", "db"));
        // What serves is what DNS answers: green and db, not the held blue.
        r.sync();
        assert_eq!(dns.len(), 2);
        r.set_held(HashSet::from(["10.0.0.3".to_string()]));
        r.sync();
        assert_eq!(dns.len(), 2);
        assert!(r.left_at("10.0.0.3").is_some() && r.left_at("10.0.0.2").is_none());
    }

    #[test]
    fn the_last_task_leaving_empties_the_backends() {
        let one = HashMap::from([("t".to_string(), member("web", "10.0.0.2", true))]);
        let c = diff(&one, &HashMap::new());
        assert_eq!(c.leaving, ["t"]);
        assert_eq!(c.backends["web"], BTreeMap::new());
        // A task without published ports touches no backends.
        let dns_only = HashMap::from([("t".to_string(), member("db", "10.0.0.9", false))]);
        assert!(diff(&HashMap::new(), &dns_only).backends.is_empty());
    }
}
