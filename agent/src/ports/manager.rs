//! [`PortManager`]: the published ports of every key, their reservations, their nft table, and
//! the state file. A change takes its host-port reservations, becomes the state at once (so the
//! next change sees it), and returns only once the nft table and the state file match it.
//!
//! Making the host match is a group commit: changes that arrive while `nft` runs are loaded
//! together by the next run, so a rollout that moves many backends at once costs a few `nft`
//! transactions, not one per task. A change whose transaction fails is undone (unless a later
//! change of the same key replaced it), so the state never claims what the kernel refused.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::rules::{ruleset, RuleEntry};
use super::sys::{DirectRoute, PortSys, RealPortSys, Reservation};
use super::{PortError, PortMapping, Protocol};

/// Where the state lives and which nft table is ours.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// `ports.json` goes here.
    pub state_dir: PathBuf,
    /// `table ip <nft_table>`; tests use unique names.
    pub nft_table: String,
}

impl PortConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        PortConfig {
            state_dir: state_dir.into(),
            nft_table: "shoal-ports".into(),
        }
    }
}

/// What [`PortManager::reconcile`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Keys that were not live any more and were unpublished.
    pub removed_keys: Vec<String>,
    /// Host ports whose reservation could not be taken again (a host process bound them while
    /// the agent was away): they stay published (the DNAT takes precedence for traffic from
    /// elsewhere), but the process keeps its socket. One line each, with the error.
    pub unreserved: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Published {
    /// As asked (host port 0 = random).
    requested: PortMapping,
    /// As published (host port ≠ 0).
    resolved: PortMapping,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeyState {
    ports: Vec<Published>,
    backends: Vec<Ipv4Addr>,
    /// Ingress routing mesh: other nodes serving the key, (underlay address, serving tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    remotes: Vec<(Ipv4Addr, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PortState {
    keys: BTreeMap<String, KeyState>,
    /// Underlay addresses of every cluster node (the mesh peers), see [`super::rules::ruleset`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<Ipv4Addr>,
}

/// The state of a key that is published, or why not.
fn published_mut<'a>(
    keys: &'a mut BTreeMap<String, KeyState>,
    key: &str,
) -> Result<&'a mut KeyState, PortError> {
    keys.get_mut(key)
        .ok_or_else(|| PortError::Invalid(format!("{key} has no published ports")))
}

type HoldKey = (Protocol, Option<Ipv4Addr>, u16);

fn hold_key(m: &PortMapping) -> HoldKey {
    (m.protocol, m.host_ip, m.host_port)
}

struct Inner {
    state: PortState,
    holds: HashMap<HoldKey, Reservation>,
    /// Bumped by every change of `state`.
    generation: u64,
}

/// What the nft table and the state file hold (see [`PortManager::flush`]).
#[derive(Default)]
struct Host {
    /// The generation of [`Inner::state`] they match.
    generation: u64,
    /// That state, put back if saving a newer one fails.
    state: PortState,
}

/// The published ports of this node. Synchronous (call it from `spawn_blocking` in async code);
/// one lock serialises changes of the state, another the runs of `nft` (always taken first).
/// Cloning shares the manager.
#[derive(Clone)]
pub struct PortManager {
    cfg: PortConfig,
    sys: Arc<dyn PortSys>,
    inner: Arc<Mutex<Inner>>,
    host: Arc<Mutex<Host>>,
}

impl std::fmt::Debug for PortManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortManager")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

const STATE_FILE: &str = "ports.json";

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PortError {
    let what = what.into();
    move |source| PortError::Io { what, source }
}

/// Keys end up in nft comments: keep them plain.
fn validate_key(key: &str) -> Result<(), PortError> {
    if key.is_empty()
        || key.len() > 100
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(PortError::Invalid(format!(
            "port key {key:?} must be 1 to 100 characters of [A-Za-z0-9_.-]"
        )));
    }
    Ok(())
}

fn validate_backends(backends: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, PortError> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for &b in backends {
        if b.is_unspecified() || b.is_loopback() || b.is_multicast() || b.is_broadcast() {
            return Err(PortError::Invalid(format!(
                "{b} cannot be a backend of a published port"
            )));
        }
        if !out.contains(&b) {
            out.push(b);
        }
    }
    Ok(out)
}

fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64
}

impl PortManager {
    /// Opens the manager with the real host side. Loads the state but changes nothing on the
    /// host: call [`reconcile`](Self::reconcile) after a restart.
    pub fn open(cfg: PortConfig) -> Result<Self, PortError> {
        Self::open_with(cfg, Arc::new(RealPortSys::new()))
    }

    /// Opens the manager over any [`PortSys`] (the fake in unit tests).
    pub fn open_with(cfg: PortConfig, sys: Arc<dyn PortSys>) -> Result<Self, PortError> {
        let t = &cfg.nft_table;
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(PortError::Invalid(format!(
                "nft table name {t:?} must be 1 to 64 characters of [A-Za-z0-9_-]"
            )));
        }
        let path = cfg.state_dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                PortError::Invalid(format!("{} is not valid port state: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PortState::default(),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        Ok(PortManager {
            cfg,
            sys,
            inner: Arc::new(Mutex::new(Inner {
                state: state.clone(),
                holds: HashMap::new(),
                generation: 0,
            })),
            host: Arc::new(Mutex::new(Host {
                generation: 0,
                state,
            })),
        })
    }

    pub fn config(&self) -> &PortConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_host(&self) -> MutexGuard<'_, Host> {
        self.host.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes (or updates) the ports of `key` to `backends`. Host port 0 gets a random free
    /// port of the ephemeral range (the same one again on an update of the key, when it can).
    /// A host port of another key, or bound by a host process, is an error, and nothing changes.
    /// Returns the mappings as published (every host port resolved), in the order given.
    pub fn publish(
        &self,
        key: &str,
        mappings: &[PortMapping],
        backends: &[Ipv4Addr],
    ) -> Result<Vec<PortMapping>, PortError> {
        validate_key(key)?;
        let backends = validate_backends(backends)?;
        let mut wanted: Vec<PortMapping> = Vec::new();
        for m in mappings {
            if m.container_port == 0 {
                return Err(PortError::Invalid(format!(
                    "container port 0 in {}: a container port must be 1-65535",
                    m.host_display()
                )));
            }
            if wanted.contains(m) {
                continue; // identical duplicates collapse
            }
            if let Some(o) = wanted.iter().find(|o| o.clashes_with(m)) {
                return Err(PortError::Invalid(format!(
                    "conflicting mappings for host port {}: to container ports {} and {}",
                    m.host_display(),
                    o.container_port,
                    m.container_port
                )));
            }
            wanted.push(*m);
        }
        if wanted.is_empty() {
            return Err(PortError::Invalid(format!("no ports to publish for {key}")));
        }

        let inner = self.lock();
        let others: Vec<(&str, PortMapping)> = inner
            .state
            .keys
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .flat_map(|(k, ks)| ks.ports.iter().map(move |p| (k.as_str(), p.resolved)))
            .collect();
        let old = inner.state.keys.get(key);
        let mut new_holds: HashMap<HoldKey, Reservation> = HashMap::new();
        let mut resolved: Vec<Option<PortMapping>> = vec![None; wanted.len()];

        // Explicit host ports first, so that random ones avoid them.
        for (i, m) in wanted.iter().enumerate().filter(|(_, m)| m.host_port != 0) {
            if let Some((by, _)) = others.iter().find(|(_, o)| o.clashes_with(m)) {
                return Err(PortError::Allocated {
                    port: m.host_display(),
                    by: by.to_string(),
                });
            }
            let hk = hold_key(m);
            if !inner.holds.contains_key(&hk) {
                let r = self.sys.reserve(m.protocol, m.host_ip, m.host_port);
                new_holds.insert(hk, r.map_err(|source| in_use(m, source))?);
            }
            resolved[i] = Some(*m);
        }
        let (lo, hi) = self.sys.ephemeral_range();
        let span = u32::from(hi - lo) + 1;
        for i in 0..wanted.len() {
            let m = wanted[i];
            if m.host_port != 0 {
                continue;
            }
            let free = |port: u16, resolved: &[Option<PortMapping>]| {
                let c = PortMapping {
                    host_port: port,
                    ..m
                };
                !others.iter().any(|(_, o)| o.clashes_with(&c))
                    && !resolved.iter().flatten().any(|o| o.clashes_with(&c))
            };
            // The port this key had for the same request, if any and still free.
            let previous = old.and_then(|ks| {
                ks.ports
                    .iter()
                    .find(|p| p.requested == m)
                    .map(|p| p.resolved.host_port)
            });
            if let Some(port) = previous.filter(|&p| free(p, &resolved)) {
                let c = PortMapping {
                    host_port: port,
                    ..m
                };
                let hk = hold_key(&c);
                if inner.holds.contains_key(&hk) || new_holds.contains_key(&hk) {
                    resolved[i] = Some(c);
                    continue;
                }
                if let Ok(r) = self.sys.reserve(c.protocol, c.host_ip, port) {
                    new_holds.insert(hk, r);
                    resolved[i] = Some(c);
                    continue;
                }
            }
            let start = (random_u64() % u64::from(span)) as u32;
            for j in 0..span {
                let port = lo + ((start + j) % span) as u16;
                let c = PortMapping {
                    host_port: port,
                    ..m
                };
                let hk = hold_key(&c);
                if !free(port, &resolved)
                    || inner.holds.contains_key(&hk)
                    || new_holds.contains_key(&hk)
                {
                    continue;
                }
                if let Ok(r) = self.sys.reserve(c.protocol, c.host_ip, port) {
                    new_holds.insert(hk, r);
                    resolved[i] = Some(c);
                    break;
                }
            }
            if resolved[i].is_none() {
                return Err(PortError::NoFreePort(format!(
                    "container port {}/{}",
                    m.container_port, m.protocol
                )));
            }
        }
        let ports: Vec<Published> = wanted
            .iter()
            .zip(&resolved)
            .map(|(w, r)| Published {
                requested: *w,
                resolved: r.expect("every mapping resolved"),
            })
            .collect();
        let out: Vec<PortMapping> = ports.iter().map(|p| p.resolved).collect();
        let remotes = old.map(|ks| ks.remotes.clone()).unwrap_or_default();
        let mut next = inner.state.clone();
        next.keys.insert(
            key.to_string(),
            KeyState {
                ports,
                backends,
                remotes,
            },
        );
        self.commit(inner, key, next, new_holds)?;
        Ok(out)
    }

    /// Replaces the backends of `key` in one nft transaction (the blue-green switch): new
    /// connections go to the new set at once, established ones keep their conntrack binding to
    /// the old backend until they end. The caller waits its drain period before stopping the
    /// old backends.
    pub fn set_backends(&self, key: &str, backends: &[Ipv4Addr]) -> Result<(), PortError> {
        let backends = validate_backends(backends)?;
        let inner = self.lock();
        let mut next = inner.state.clone();
        let ks = published_mut(&mut next.keys, key)?;
        if ks.backends == backends {
            return Ok(());
        }
        ks.backends = backends;
        self.commit(inner, key, next, HashMap::new())
    }

    /// Sets the routing-mesh side of `key` (published already): the other nodes that serve it,
    /// (underlay address, serving tasks there), and the underlay addresses of every cluster
    /// node (`peers`, shared by all keys). Local backends stay as they are; one nft
    /// transaction, like [`set_backends`](Self::set_backends).
    pub fn set_remotes(
        &self,
        key: &str,
        remotes: &[(Ipv4Addr, u32)],
        peers: &[Ipv4Addr],
    ) -> Result<(), PortError> {
        let mut remotes: Vec<(Ipv4Addr, u32)> =
            remotes.iter().copied().filter(|(_, n)| *n > 0).collect();
        remotes.sort();
        remotes.dedup_by_key(|(a, _)| *a);
        validate_backends(&remotes.iter().map(|(a, _)| *a).collect::<Vec<_>>())?;
        let mut peers = validate_backends(peers)?;
        peers.sort();
        let inner = self.lock();
        let mut next = inner.state.clone();
        let ks = published_mut(&mut next.keys, key)?;
        if ks.remotes == remotes && next.peers == peers {
            return Ok(());
        }
        ks.remotes = remotes;
        next.peers = peers;
        self.commit(inner, key, next, HashMap::new())
    }

    /// Unpublishes every port of `key` and releases the host ports. A key with no published
    /// ports is not an error.
    pub fn unpublish(&self, key: &str) -> Result<(), PortError> {
        let inner = self.lock();
        if !inner.state.keys.contains_key(key) {
            return Ok(());
        }
        let mut next = inner.state.clone();
        next.keys.remove(key);
        self.commit(inner, key, next, HashMap::new())
    }

    /// After a restart: unpublishes the keys that are not in `live_keys`, loads the rules of
    /// the others again (whatever the kernel has now), and takes the host-port reservations
    /// again.
    pub fn reconcile(&self, live_keys: &HashSet<String>) -> Result<ReconcileReport, PortError> {
        let mut host = self.lock_host();
        let mut inner = self.lock();
        let mut next = inner.state.clone();
        let mut report = ReconcileReport::default();
        next.keys.retain(|k, _| {
            let keep = live_keys.contains(k);
            if !keep {
                report.removed_keys.push(k.clone());
            }
            keep
        });
        let mut new_holds = HashMap::new();
        for ks in next.keys.values() {
            for p in &ks.ports {
                let m = p.resolved;
                let hk = hold_key(&m);
                if inner.holds.contains_key(&hk) || new_holds.contains_key(&hk) {
                    continue;
                }
                match self.sys.reserve(m.protocol, m.host_ip, m.host_port) {
                    Ok(r) => {
                        new_holds.insert(hk, r);
                    }
                    Err(e) => report.unreserved.push(in_use(&m, e).to_string()),
                }
            }
        }
        self.apply(&next)?;
        self.save(&next)?;
        inner.state = next.clone();
        inner.generation += 1;
        inner.holds.extend(new_holds);
        Self::prune_holds(&mut inner);
        *host = Host {
            generation: inner.generation,
            state: next,
        };
        Ok(report)
    }

    /// Every key with its published ports (resolved) and backends, sorted by key.
    pub fn list(&self) -> Vec<(String, Vec<PortMapping>, Vec<Ipv4Addr>)> {
        self.lock()
            .state
            .keys
            .iter()
            .map(|(k, ks)| {
                (
                    k.clone(),
                    ks.ports.iter().map(|p| p.resolved).collect(),
                    ks.backends.clone(),
                )
            })
            .collect()
    }

    /// Removes the nft table, every reservation and the state (tests, teardown).
    pub fn remove_all(&self) -> Result<(), PortError> {
        let mut host = self.lock_host();
        let mut inner = self.lock();
        self.sys
            .apply_nft(&ruleset(&self.cfg.nft_table, &[], &[], &[]))?;
        inner.holds.clear();
        inner.state = PortState::default();
        inner.generation += 1;
        *host = Host {
            generation: inner.generation,
            state: PortState::default(),
        };
        self.save(&inner.state)
    }

    /// The nft script for the current state (for diagnostics).
    pub fn current_ruleset(&self) -> String {
        let inner = self.lock();
        let routes = self.routes(&inner.state);
        self.script(&inner.state, &routes)
    }

    /// Makes `next` (a change of `key` only) the state, then waits until the host matches it.
    /// On failure `key` is put back as it was (unless a later change replaced it meanwhile)
    /// and its new reservations are dropped.
    fn commit(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        key: &str,
        next: PortState,
        new_holds: HashMap<HoldKey, Reservation>,
    ) -> Result<(), PortError> {
        let before = inner.state.keys.get(key).cloned();
        let after = next.keys.get(key).cloned();
        inner.state = next;
        inner.generation += 1;
        inner.holds.extend(new_holds);
        let mine = inner.generation;
        drop(inner);
        let result = self.flush(mine);
        let mut inner = self.lock();
        if result.is_err() && inner.state.keys.get(key) == after.as_ref() {
            match before {
                Some(ks) => inner.state.keys.insert(key.to_string(), ks),
                None => inner.state.keys.remove(key),
            };
            inner.generation += 1;
        }
        Self::prune_holds(&mut inner);
        result
    }

    /// Loads the state of generation `mine` or a later one into nft and saves it, unless a
    /// run since has (group commit: whoever holds the host lock loads everything changed so
    /// far). On failure the kernel keeps the table it had (an nft transaction is atomic) and
    /// the file the state it had.
    fn flush(&self, mine: u64) -> Result<(), PortError> {
        let mut host = self.lock_host();
        if host.generation >= mine {
            return Ok(());
        }
        let (state, generation) = {
            let inner = self.lock();
            (inner.state.clone(), inner.generation)
        };
        self.apply(&state)?;
        if let Err(e) = self.save(&state) {
            let _ = self.apply(&host.state);
            return Err(e);
        }
        *host = Host { generation, state };
        Ok(())
    }

    /// Drops the reservations no mapping uses any more.
    fn prune_holds(inner: &mut Inner) {
        let used: HashSet<HoldKey> = inner
            .state
            .keys
            .values()
            .flat_map(|ks| ks.ports.iter().map(|p| hold_key(&p.resolved)))
            .collect();
        inner.holds.retain(|hk, _| used.contains(hk));
    }

    fn routes(&self, state: &PortState) -> Vec<DirectRoute> {
        let backends: BTreeSet<Ipv4Addr> = state
            .keys
            .values()
            .flat_map(|ks| ks.backends.iter().copied())
            .collect();
        let backends: Vec<Ipv4Addr> = backends.into_iter().collect();
        let routes: BTreeSet<DirectRoute> = self
            .sys
            .routes_to(&backends)
            .into_iter()
            .flatten()
            .collect();
        routes.into_iter().collect()
    }

    fn script(&self, state: &PortState, routes: &[DirectRoute]) -> String {
        let entries: Vec<RuleEntry<'_>> = state
            .keys
            .iter()
            .flat_map(|(k, ks)| {
                ks.ports.iter().map(move |p| RuleEntry {
                    key: k,
                    mapping: p.resolved,
                    backends: &ks.backends,
                    remotes: &ks.remotes,
                })
            })
            .collect();
        ruleset(&self.cfg.nft_table, &entries, routes, &state.peers)
    }

    /// Loopback DNAT needs `route_localnet` on the backends' links (see the module docs), then
    /// the table is loaded in one transaction.
    fn apply(&self, state: &PortState) -> Result<(), PortError> {
        let routes = self.routes(state);
        let ifaces: BTreeSet<&str> = routes.iter().map(|r| r.iface.as_str()).collect();
        for i in ifaces {
            self.sys.enable_route_localnet(i)?;
        }
        self.sys.apply_nft(&self.script(state, &routes))
    }

    fn save(&self, state: &PortState) -> Result<(), PortError> {
        save_json(&self.cfg.state_dir, STATE_FILE, state)
    }
}

fn in_use(m: &PortMapping, source: std::io::Error) -> PortError {
    let addr = format!(
        "{}:{}",
        m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        m.host_port
    );
    PortError::InUse {
        port: m.host_display(),
        addr,
        source,
    }
}

/// Writes `dir/name` durably: temp file, fsync, rename, fsync of the directory.
fn save_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), PortError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| PortError::Invalid(format!("encoding port state: {e}")))?;
    let mut f = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::sys::FakePortSys;

    fn mgr() -> (tempfile::TempDir, FakePortSys, PortManager) {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakePortSys::new();
        fake.state.lock().unwrap().routes = vec![DirectRoute {
            iface: "sh-a".into(),
            subnet: "10.1.0.0/24".parse().unwrap(),
        }];
        let cfg = PortConfig {
            state_dir: dir.path().join("state"),
            nft_table: "ptest".into(),
        };
        let m = PortManager::open_with(cfg, Arc::new(fake.clone())).unwrap();
        (dir, fake, m)
    }

    const B1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const B2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);

    #[test]
    fn changes_made_while_nft_runs_load_together() {
        let (_d, fake, m) = mgr();
        for k in 0..8u16 {
            m.publish(&format!("k{k}"), &[PortMapping::tcp(9000 + k, 80)], &[B1])
                .unwrap();
        }
        let before = fake.get().nft_applies;
        fake.state.lock().unwrap().nft_delay = Some(std::time::Duration::from_millis(30));
        let threads: Vec<_> = (0..8u8)
            .map(|k| {
                let m = m.clone();
                std::thread::spawn(move || {
                    m.set_backends(&format!("k{k}"), &[Ipv4Addr::new(10, 1, 0, 10 + k)])
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let s = fake.get();
        // Every change is in the table, in fewer transactions than changes.
        for k in 0..8u8 {
            let rule = format!("dnat to 10.1.0.{}:80 comment \"k{k}\"", 10 + k);
            assert!(s.nft_script.contains(&rule), "{rule} in {}", s.nft_script);
        }
        assert!(
            s.nft_applies - before < 8,
            "{} runs",
            s.nft_applies - before
        );
        // And the saved state has them too.
        let reopened =
            PortManager::open_with(m.config().clone(), Arc::new(FakePortSys::new())).unwrap();
        assert_eq!(reopened.list(), m.list());
    }

    #[test]
    fn a_refused_change_is_undone_and_the_next_one_loads() {
        let (_d, fake, m) = mgr();
        m.publish("c1", &[PortMapping::tcp(8080, 80)], &[B1])
            .unwrap();
        fake.state.lock().unwrap().fail_nft = true;
        assert!(m.set_backends("c1", &[B2]).is_err());
        assert!(m
            .publish("c2", &[PortMapping::tcp(8081, 80)], &[B1])
            .is_err());
        assert_eq!(m.list().len(), 1);
        assert_eq!(m.list()[0].2, [B1]);
        assert!(!fake.get().held.contains_key(&(Protocol::Tcp, 8081)));
        fake.state.lock().unwrap().fail_nft = false;
        m.set_backends("c1", &[B2]).unwrap();
        assert!(fake
            .get()
            .nft_script
            .contains("dnat to 10.1.0.3:80 comment \"c1\""));
    }

    #[test]
    fn publish_switch_unpublish() {
        let (_d, fake, m) = mgr();
        let out = m
            .publish("c1", &[PortMapping::tcp(8080, 80)], &[B1])
            .unwrap();
        assert_eq!(out, [PortMapping::tcp(8080, 80)]);
        let s = fake.get();
        assert!(s
            .nft_script
            .contains("tcp dport 8080 dnat to 10.1.0.2:80 comment \"c1\""));
        assert!(s.held.contains_key(&(Protocol::Tcp, 8080)));
        assert!(s.route_localnet.contains("sh-a"));
        m.set_backends("c1", &[B2, B1, B2]).unwrap();
        let s = fake.get();
        assert!(
            s.nft_script
                .contains("numgen inc mod 2 map { 0 : 10.1.0.3, 1 : 10.1.0.2 } : 80"),
            "{}",
            s.nft_script
        );
        assert_eq!(
            m.list(),
            [("c1".into(), vec![PortMapping::tcp(8080, 80)], vec![B2, B1])]
        );
        m.unpublish("c1").unwrap();
        m.unpublish("c1").unwrap();
        let s = fake.get();
        assert_eq!(s.nft_script, ruleset("ptest", &[], &[], &[]));
        assert!(s.held.is_empty());
        assert!(m.set_backends("c1", &[B1]).is_err());
    }

    #[test]
    fn conflicts_and_host_processes() {
        let (_d, fake, m) = mgr();
        m.publish("a", &[PortMapping::tcp(8080, 80)], &[B1])
            .unwrap();
        let applies = fake.get().nft_applies;
        // Another key on the same port, also when limited to one IP.
        let e = m
            .publish("b", &[PortMapping::tcp(8080, 81)], &[B2])
            .unwrap_err();
        assert_eq!(e.to_string(), "port 8080/tcp is already allocated");
        let local = PortMapping {
            host_ip: Some(Ipv4Addr::LOCALHOST),
            ..PortMapping::tcp(8080, 80)
        };
        assert!(matches!(
            m.publish("b", &[local], &[B2]),
            Err(PortError::Allocated { .. })
        ));
        // UDP on the same number is fine.
        m.publish("b", &[PortMapping::udp(8080, 80)], &[B2])
            .unwrap();
        // A host process on 9090: refused, and the other port of the request is not kept.
        fake.state
            .lock()
            .unwrap()
            .busy
            .insert((Protocol::Tcp, 9090));
        let applies2 = fake.get().nft_applies;
        let e = m
            .publish(
                "c",
                &[PortMapping::tcp(9091, 80), PortMapping::tcp(9090, 80)],
                &[B1],
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("port 9090/tcp is already in use on the host"),
            "{e}"
        );
        let s = fake.get();
        assert!(!s.held.contains_key(&(Protocol::Tcp, 9091)));
        assert_eq!(s.nft_applies, applies2);
        assert!(applies2 > applies);
        assert_eq!(m.list().len(), 2);
        // Conflicting duplicates in one request; identical ones collapse.
        let e = m
            .publish(
                "d",
                &[PortMapping::tcp(7000, 80), PortMapping::tcp(7000, 81)],
                &[B1],
            )
            .unwrap_err();
        assert!(e.to_string().contains("conflicting mappings"), "{e}");
        let out = m
            .publish(
                "d",
                &[PortMapping::tcp(7000, 80), PortMapping::tcp(7000, 80)],
                &[B1],
            )
            .unwrap();
        assert_eq!(out.len(), 1);
        // Container port 0, bad keys, bad backends.
        assert!(m.publish("e", &[PortMapping::tcp(7001, 0)], &[B1]).is_err());
        assert!(m
            .publish("e f", &[PortMapping::tcp(7001, 1)], &[B1])
            .is_err());
        assert!(m
            .publish("e\"", &[PortMapping::tcp(7001, 1)], &[B1])
            .is_err());
        assert!(m
            .publish("e", &[PortMapping::tcp(7001, 1)], &[Ipv4Addr::LOCALHOST])
            .is_err());
        assert!(m.publish("e", &[], &[B1]).is_err());
        assert!(!fake.get().held.contains_key(&(Protocol::Tcp, 7001)));
    }

    #[test]
    fn random_ports_are_free_stable_and_run_out() {
        let (_d, fake, m) = mgr();
        // Range 40000-40009; a host process holds 40000..=40004.
        for p in 40000..=40004 {
            fake.state.lock().unwrap().busy.insert((Protocol::Tcp, p));
        }
        let out = m
            .publish(
                "a",
                &[PortMapping::tcp(0, 80), PortMapping::tcp(40006, 81)],
                &[B1],
            )
            .unwrap();
        let ra = out[0].host_port;
        assert!((40005..=40009).contains(&ra) && ra != 40006, "{ra}");
        assert_eq!(out[1].host_port, 40006);
        // An update of the key keeps its random port.
        let again = m
            .publish(
                "a",
                &[PortMapping::tcp(0, 80), PortMapping::tcp(40006, 81)],
                &[B2],
            )
            .unwrap();
        assert_eq!(again, out);
        // Three ports are left: 3 random ports fit, a fourth does not.
        let b = m
            .publish(
                "b",
                &[PortMapping::tcp(0, 1), PortMapping::tcp(0, 2)],
                &[B1],
            )
            .unwrap();
        assert!(b.iter().all(|p| p.host_port >= 40005 && p.host_port != ra));
        let e = m
            .publish(
                "c",
                &[PortMapping::tcp(0, 1), PortMapping::tcp(0, 2)],
                &[B1],
            )
            .unwrap_err();
        assert!(matches!(e, PortError::NoFreePort(_)), "{e}");
        // UDP has its own ports.
        m.publish("c", &[PortMapping::udp(0, 53)], &[B1]).unwrap();
    }

    #[test]
    fn failures_change_nothing() {
        let (_d, fake, m) = mgr();
        m.publish("a", &[PortMapping::tcp(8080, 80)], &[B1])
            .unwrap();
        let before = (m.list(), fake.get().nft_script);
        fake.state.lock().unwrap().fail_nft = true;
        assert!(m
            .publish("b", &[PortMapping::tcp(8081, 80)], &[B1])
            .is_err());
        assert!(m.set_backends("a", &[B2]).is_err());
        assert!(m.unpublish("a").is_err());
        fake.state.lock().unwrap().fail_nft = false;
        assert_eq!((m.list(), fake.get().nft_script), before);
        let held: Vec<_> = fake.get().held.keys().copied().collect();
        assert_eq!(held, [(Protocol::Tcp, 8080)]);
    }

    #[test]
    fn restart_reconciles() {
        let (d, fake, m) = mgr();
        m.publish("live", &[PortMapping::tcp(8080, 80)], &[B1])
            .unwrap();
        m.publish("dead", &[PortMapping::udp(0, 53)], &[B2])
            .unwrap();
        drop(m); // the daemon goes: reservations go, the table stays
        assert!(fake.get().held.is_empty());
        fake.state
            .lock()
            .unwrap()
            .busy
            .insert((Protocol::Tcp, 8080));
        let cfg = PortConfig {
            state_dir: d.path().join("state"),
            nft_table: "ptest".into(),
        };
        let m = PortManager::open_with(cfg.clone(), Arc::new(fake.clone())).unwrap();
        assert_eq!(m.list().len(), 2);
        let live: HashSet<String> = ["live".to_string()].into();
        let r = m.reconcile(&live).unwrap();
        assert_eq!(r.removed_keys, ["dead"]);
        assert_eq!(r.unreserved.len(), 1, "{r:?}");
        assert!(r.unreserved[0].contains("8080/tcp"));
        assert!(fake.get().nft_script.contains("tcp dport 8080"));
        assert!(!fake.get().nft_script.contains("udp"));
        // The process goes; a second reconcile takes the port.
        fake.state.lock().unwrap().busy.clear();
        let r = m.reconcile(&live).unwrap();
        assert!(r.unreserved.is_empty() && r.removed_keys.is_empty());
        assert!(fake.get().held.contains_key(&(Protocol::Tcp, 8080)));
        // The state on disk is the reconciled one.
        let m2 = PortManager::open_with(cfg, Arc::new(FakePortSys::new())).unwrap();
        assert_eq!(m2.list(), m.list());
        m.remove_all().unwrap();
        assert!(m.list().is_empty() && fake.get().held.is_empty());
        assert_eq!(fake.get().nft_script, ruleset("ptest", &[], &[], &[]));
    }

    #[test]
    fn bad_config_and_state() {
        let d = tempfile::tempdir().unwrap();
        let cfg = PortConfig {
            state_dir: d.path().into(),
            nft_table: "bad table".into(),
        };
        assert!(PortManager::open_with(cfg, Arc::new(FakePortSys::new())).is_err());
        std::fs::write(d.path().join(STATE_FILE), b"{nope").unwrap();
        let e = PortManager::open_with(PortConfig::new(d.path()), Arc::new(FakePortSys::new()))
            .unwrap_err();
        assert!(e.to_string().contains("not valid port state"), "{e}");
    }
}
