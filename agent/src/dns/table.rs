//! The record table behind the embedded DNS server: pure, no I/O.
//!
//! One *endpoint* is one container's address on one network, with the names it answers to. A
//! query is scoped by the client's address: the client's networks are those of every endpoint
//! carrying that address, and only endpoints on those networks can answer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Normalises a DNS name for the table: ASCII-lowercase, one trailing dot dropped.
pub(crate) fn normalize_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

#[derive(Debug, Clone)]
struct Endpoint {
    network_id: String,
    ip: Ipv4Addr,
    /// Normalised names, in the caller's order (the first is the PTR name), no duplicates.
    names: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    endpoints: HashMap<String, Endpoint>,
    /// name → ids of the endpoints answering to it (on any network).
    by_name: HashMap<String, BTreeSet<String>>,
    /// address → ids of the endpoints carrying it (one per network, normally).
    by_ip: HashMap<Ipv4Addr, BTreeSet<String>>,
    /// container id (the endpoint id up to its first `/`) → ids of its endpoints.
    by_container: HashMap<String, BTreeSet<String>>,
    /// container id → its `(network id, address)` pairs, from attach to release: a container
    /// may ask before its names are published (its process starts before it joins rotation)
    /// and after they are withdrawn (while it drains).
    clients: HashMap<String, Vec<(String, Ipv4Addr)>>,
    /// address → the registered clients carrying it.
    clients_by_ip: HashMap<Ipv4Addr, BTreeSet<String>>,
}

/// The container part of an endpoint id `"<container id>/<network id>"` (the whole id when it
/// has no `/`).
fn container_of(endpoint_id: &str) -> &str {
    endpoint_id.split('/').next().unwrap_or(endpoint_id)
}

impl Inner {
    fn unindex(&mut self, id: &str) -> Option<Endpoint> {
        let ep = self.endpoints.remove(id)?;
        for name in &ep.names {
            if let Some(ids) = self.by_name.get_mut(name) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_name.remove(name);
                }
            }
        }
        if let Some(ids) = self.by_ip.get_mut(&ep.ip) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_ip.remove(&ep.ip);
            }
        }
        let container = container_of(id);
        if let Some(ids) = self.by_container.get_mut(container) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_container.remove(container);
            }
        }
        Some(ep)
    }

    fn insert(&mut self, endpoint_id: &str, network_id: &str, ip: Ipv4Addr, names: Vec<String>) {
        let mut seen = HashSet::new();
        let names: Vec<String> = names
            .iter()
            .map(|n| normalize_name(n.trim()))
            .filter(|n| !n.is_empty() && seen.insert(n.clone()))
            .collect();
        self.unindex(endpoint_id);
        for name in &names {
            self.by_name
                .entry(name.clone())
                .or_default()
                .insert(endpoint_id.to_string());
        }
        self.by_ip
            .entry(ip)
            .or_default()
            .insert(endpoint_id.to_string());
        self.by_container
            .entry(container_of(endpoint_id).to_string())
            .or_default()
            .insert(endpoint_id.to_string());
        self.endpoints.insert(
            endpoint_id.to_string(),
            Endpoint {
                network_id: network_id.to_string(),
                ip,
                names,
            },
        );
    }

    fn remove_container(&mut self, container_id: &str) {
        let container = container_id.strip_suffix('/').unwrap_or(container_id);
        let ids: Vec<String> = self
            .by_container
            .get(container)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for id in ids {
            self.unindex(&id);
        }
    }

    /// Networks the client at `client` is attached to: the client is the container (or
    /// containers) registered with that address or owning an endpoint with it, and all of its
    /// networks count, so a container on two networks sees both whichever of its addresses it
    /// asks from.
    fn client_networks(&self, client: Ipv4Addr) -> HashSet<&str> {
        let by_endpoint = self
            .by_ip
            .get(&client)
            .into_iter()
            .flatten()
            .flat_map(|id| {
                self.by_container
                    .get(container_of(id))
                    .into_iter()
                    .flatten()
            })
            .filter_map(|id| self.endpoints.get(id))
            .map(|ep| ep.network_id.as_str());
        let registered = self
            .clients_by_ip
            .get(&client)
            .into_iter()
            .flatten()
            .filter_map(|container| self.clients.get(container))
            .flatten()
            .map(|(network_id, _)| network_id.as_str());
        by_endpoint.chain(registered).collect()
    }

    fn remove_client(&mut self, container_id: &str) {
        for (_, ip) in self.clients.remove(container_id).into_iter().flatten() {
            if let Some(set) = self.clients_by_ip.get_mut(&ip) {
                set.remove(container_id);
                if set.is_empty() {
                    self.clients_by_ip.remove(&ip);
                }
            }
        }
    }
}

/// The service-discovery record table. Cheap to clone: clones share the same table.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    inner: Arc<RwLock<Inner>>,
    /// Bumped on every answered lookup; the answer list is rotated by it (round robin).
    rotation: Arc<AtomicUsize>,
    /// When each address was last given out in an answer: a client may still hold it in its
    /// cache for the answer's TTL, so a task leaving rotation must not stop before then.
    handed_out: Arc<Mutex<HashMap<Ipv4Addr, Instant>>>,
}

impl DnsTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers or replaces one endpoint: a container's address on one network, and the names it
    /// answers to (service name, container name, aliases and `tasks.<service>`: the caller passes
    /// all of them). Names are case-insensitive and a trailing dot is ignored. The first name is
    /// the one a reverse (PTR) lookup of `ip` answers with.
    pub fn set_endpoint(
        &self,
        endpoint_id: &str,
        network_id: &str,
        ip: Ipv4Addr,
        names: Vec<String>,
    ) {
        self.write().insert(endpoint_id, network_id, ip, names);
    }

    /// Removes every endpoint of the `leaving` containers, then registers `entering`
    /// endpoints (`(endpoint id, network id, address, names)`, as [`DnsTable::set_endpoint`]),
    /// under one lock: a lookup sees the table before or after, never half-way (a blue-green
    /// switch of a service's names).
    pub fn swap(&self, leaving: &[String], entering: Vec<(String, String, Ipv4Addr, Vec<String>)>) {
        let mut inner = self.write();
        for container in leaving {
            inner.remove_container(container);
        }
        for (endpoint_id, network_id, ip, names) in entering {
            inner.insert(&endpoint_id, &network_id, ip, names);
        }
    }

    /// Removes one endpoint; unknown ids are ignored.
    pub fn remove_endpoint(&self, endpoint_id: &str) {
        self.write().unindex(endpoint_id);
    }

    /// Removes every endpoint of one container: those whose id starts with `"<container id>/"`.
    /// `container_id` may be given with or without the trailing `/`.
    pub fn remove_container(&self, container_id: &str) {
        self.write().remove_container(container_id);
    }

    /// Registers (or replaces) a container as a client: its address on each of its networks,
    /// from the moment it is attached, before its process starts. It is then answered with the
    /// names on those networks whether or not names of its own are published.
    pub fn set_client(&self, container_id: &str, attachments: Vec<(String, Ipv4Addr)>) {
        let mut inner = self.write();
        inner.remove_client(container_id);
        for (_, ip) in &attachments {
            inner
                .clients_by_ip
                .entry(*ip)
                .or_default()
                .insert(container_id.to_string());
        }
        inner.clients.insert(container_id.to_string(), attachments);
    }

    /// Forgets a container registered by [`DnsTable::set_client`] (its endpoints stay, if
    /// any); unknown ids are ignored.
    pub fn remove_client(&self, container_id: &str) {
        self.write().remove_client(container_id);
    }

    /// Number of endpoints registered.
    pub fn len(&self) -> usize {
        self.read().endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `client` is a known endpoint address (a container on one of our networks).
    pub fn knows_client(&self, client: Ipv4Addr) -> bool {
        let inner = self.read();
        inner.by_ip.contains_key(&client) || inner.clients_by_ip.contains_key(&client)
    }

    /// Answers A queries for `name` asked by the container whose address is `client`: searched in
    /// every network that container is attached to (all endpoints sharing the container part of
    /// the endpoint id of the endpoint with address `client`), all matching addresses (deduplicated), rotated
    /// round-robin on every call. `None` means "not ours": forward it.
    pub fn lookup(&self, client: Ipv4Addr, name: &str) -> Option<Vec<Ipv4Addr>> {
        let name = normalize_name(name);
        let mut ips: Vec<Ipv4Addr> = {
            let inner = self.read();
            let nets = inner.client_networks(client);
            if nets.is_empty() {
                return None;
            }
            let ids = inner.by_name.get(&name)?;
            let set: BTreeSet<Ipv4Addr> = ids
                .iter()
                .filter_map(|id| inner.endpoints.get(id))
                .filter(|ep| nets.contains(ep.network_id.as_str()))
                .map(|ep| ep.ip)
                .collect();
            set.into_iter().collect()
        };
        if ips.is_empty() {
            return None;
        }
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        let len = ips.len();
        ips.rotate_left(turn % len);
        Some(ips)
    }

    /// Records that `ips` were just given out in an answer that lives `ttl`. Entries whose TTL
    /// ran out are dropped as the map grows, so it stays as small as the addresses in use.
    pub fn note_handed_out(&self, ips: &[Ipv4Addr], now: Instant, ttl: Duration) {
        let mut handed = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if handed.len() >= 1024 {
            handed.retain(|_, at| now.saturating_duration_since(*at) < ttl);
        }
        for ip in ips {
            handed.insert(*ip, now);
        }
    }

    /// When `ip` was last given out in an answer, if ever (or since it was forgotten).
    pub fn handed_out_at(&self, ip: Ipv4Addr) -> Option<Instant> {
        let handed = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        handed.get(&ip).copied()
    }

    /// The PTR name (without trailing dot) for `ip`, if it is an endpoint address on one of the
    /// networks of `client`. `None` means "not ours": forward it.
    pub fn reverse(&self, client: Ipv4Addr, ip: Ipv4Addr) -> Option<String> {
        let inner = self.read();
        let nets = inner.client_networks(client);
        inner
            .by_ip
            .get(&ip)?
            .iter()
            .filter_map(|id| inner.endpoints.get(id))
            .filter(|ep| nets.contains(ep.network_id.as_str()))
            .find_map(|ep| ep.names.first().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn names(ns: &[&str]) -> Vec<String> {
        ns.iter().map(|s| s.to_string()).collect()
    }

    /// net1: client (10.0.0.2), web.1 (10.0.0.5), web.2 (10.0.0.6); net2: db (10.1.0.7) and
    /// a second address of web.1 (10.1.0.5); other (10.2.0.2) only on net3.
    fn sample() -> DnsTable {
        let t = DnsTable::new();
        t.set_endpoint("client/net1", "net1", ip("10.0.0.2"), names(&["client"]));
        t.set_endpoint(
            "c1/net1",
            "net1",
            ip("10.0.0.5"),
            names(&["web.1.abc", "web", "tasks.web", "Frontend"]),
        );
        t.set_endpoint(
            "c2/net1",
            "net1",
            ip("10.0.0.6"),
            names(&["web.2.def", "web", "tasks.web"]),
        );
        t.set_endpoint(
            "c1/net2",
            "net2",
            ip("10.1.0.5"),
            names(&["web.1.abc", "web"]),
        );
        t.set_endpoint(
            "db/net2",
            "net2",
            ip("10.1.0.7"),
            names(&["db", "tasks.db"]),
        );
        t.set_endpoint("other/net3", "net3", ip("10.2.0.2"), names(&["other"]));
        t
    }

    fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        v.sort();
        v
    }

    #[test]
    fn scoped_by_client_networks() {
        let t = sample();
        let client = ip("10.0.0.2");
        assert_eq!(
            sorted(t.lookup(client, "web").unwrap()),
            vec![ip("10.0.0.5"), ip("10.0.0.6")]
        );
        // db is only on net2, the client is only on net1.
        assert_eq!(t.lookup(client, "db"), None);
        // A client on net2 sees web.1's net2 address and db.
        let on_net2 = ip("10.1.0.7");
        assert_eq!(t.lookup(on_net2, "web"), Some(vec![ip("10.1.0.5")]));
        assert_eq!(t.lookup(on_net2, "db"), Some(vec![ip("10.1.0.7")]));
        // A container on both networks sees the union, whichever of its addresses it asks from.
        for from in [ip("10.0.0.5"), ip("10.1.0.5")] {
            assert_eq!(
                sorted(t.lookup(from, "web").unwrap()),
                vec![ip("10.0.0.5"), ip("10.0.0.6"), ip("10.1.0.5")]
            );
            assert_eq!(t.lookup(from, "db"), Some(vec![ip("10.1.0.7")]));
        }
        // Unknown clients get nothing (forwarding only).
        assert_eq!(t.lookup(ip("192.168.1.1"), "web"), None);
        assert!(!t.knows_client(ip("192.168.1.1")));
        assert!(t.knows_client(client));
        // Unknown names: not ours.
        assert_eq!(t.lookup(client, "example.com"), None);
    }

    #[test]
    fn names_are_case_insensitive_and_trailing_dot_ignored() {
        let t = sample();
        let client = ip("10.0.0.2");
        assert_eq!(t.lookup(client, "FRONTEND."), Some(vec![ip("10.0.0.5")]));
        assert_eq!(t.lookup(client, "frontend"), Some(vec![ip("10.0.0.5")]));
        assert_eq!(sorted(t.lookup(client, "Web.").unwrap()).len(), 2);
        assert_eq!(t.lookup(client, "web.1.ABC."), Some(vec![ip("10.0.0.5")]));
    }

    #[test]
    fn tasks_names() {
        let t = sample();
        assert_eq!(
            sorted(t.lookup(ip("10.0.0.2"), "tasks.web").unwrap()),
            vec![ip("10.0.0.5"), ip("10.0.0.6")]
        );
        assert_eq!(
            t.lookup(ip("10.1.0.7"), "tasks.db"),
            Some(vec![ip("10.1.0.7")])
        );
    }

    #[test]
    fn round_robin_rotates_every_answer() {
        let t = DnsTable::new();
        t.set_endpoint("client/n", "n", ip("10.0.0.2"), names(&["client"]));
        for i in 0..3 {
            t.set_endpoint(
                &format!("c{i}/n"),
                "n",
                Ipv4Addr::new(10, 0, 0, 10 + i),
                names(&["svc"]),
            );
        }
        let mut firsts = Vec::new();
        let mut prev: Option<Vec<Ipv4Addr>> = None;
        for _ in 0..6 {
            let ans = t.lookup(ip("10.0.0.2"), "svc").unwrap();
            assert_eq!(ans.len(), 3);
            if let Some(p) = &prev {
                assert_ne!(p, &ans, "consecutive answers must differ in order");
                assert_eq!(sorted(p.clone()), sorted(ans.clone()));
            }
            firsts.push(ans[0]);
            prev = Some(ans);
        }
        let distinct: HashSet<_> = firsts.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "each address comes first in turn: {firsts:?}"
        );
    }

    #[test]
    fn a_registered_client_is_answered_before_and_after_its_own_names() {
        let t = sample();
        let newcomer = ip("10.0.0.30");
        assert_eq!(t.lookup(newcomer, "web"), None, "unknown client");
        // Attached, process starting, no names of its own yet: it sees net1 (and net2, its
        // second network) but nothing else.
        t.set_client(
            "oneoff",
            vec![("net1".into(), newcomer), ("net2".into(), ip("10.1.0.30"))],
        );
        assert!(t.knows_client(newcomer));
        assert_eq!(
            sorted(t.lookup(newcomer, "web").unwrap()),
            vec![ip("10.0.0.5"), ip("10.0.0.6"), ip("10.1.0.5")]
        );
        assert_eq!(t.lookup(newcomer, "db"), Some(vec![ip("10.1.0.7")]));
        assert_eq!(t.lookup(newcomer, "other"), None);
        assert_eq!(
            t.reverse(newcomer, ip("10.0.0.5")),
            Some("web.1.abc".into())
        );
        // Its names come and go (rotation); it stays a client until released.
        t.set_endpoint("oneoff/net1", "net1", newcomer, names(&["oneoff"]));
        t.remove_container("oneoff");
        assert_eq!(t.lookup(newcomer, "db"), Some(vec![ip("10.1.0.7")]));
        t.remove_client("oneoff");
        assert!(!t.knows_client(newcomer));
        assert_eq!(t.lookup(newcomer, "web"), None);
    }

    #[test]
    fn replace_and_remove() {
        let t = sample();
        let client = ip("10.0.0.2");
        // Replacing an endpoint drops its old names and address.
        t.set_endpoint("c2/net1", "net1", ip("10.0.0.9"), names(&["web.2.def"]));
        assert_eq!(t.lookup(client, "web"), Some(vec![ip("10.0.0.5")]));
        assert_eq!(t.lookup(client, "web.2.def"), Some(vec![ip("10.0.0.9")]));
        assert_eq!(t.reverse(client, ip("10.0.0.6")), None);

        t.remove_endpoint("c2/net1");
        assert_eq!(t.lookup(client, "web.2.def"), None);
        t.remove_endpoint("no-such");

        // Removing a container drops all of its endpoints, and only its own ("c1" must not match
        // "c10/...").
        t.set_endpoint("c10/net1", "net1", ip("10.0.0.10"), names(&["web"]));
        t.remove_container("c1");
        assert_eq!(t.lookup(client, "web"), Some(vec![ip("10.0.0.10")]));
        assert_eq!(t.lookup(client, "frontend"), None);
        assert_eq!(t.lookup(ip("10.1.0.7"), "web"), None);
        t.remove_container("c10/");
        assert_eq!(t.lookup(client, "web"), None);
        assert_eq!(t.len(), 3);

        // Once the client itself is gone it is no longer scoped to anything.
        t.remove_container("client");
        assert_eq!(t.lookup(client, "web.1.abc"), None);
        assert!(!t.knows_client(client));
    }

    #[test]
    fn a_swap_replaces_one_set_of_endpoints_by_another() {
        let t = DnsTable::new();
        let net = "n1";
        t.set_endpoint("client/n1", net, ip("10.0.0.2"), names(&["client"]));
        t.set_endpoint("blue/n1", net, ip("10.0.0.3"), names(&["blue", "web"]));
        t.swap(
            &["blue".to_string(), "gone".to_string()],
            vec![(
                "green/n1".to_string(),
                net.to_string(),
                ip("10.0.0.4"),
                names(&["green", "web"]),
            )],
        );
        assert_eq!(t.lookup(ip("10.0.0.2"), "web"), Some(vec![ip("10.0.0.4")]));
        assert_eq!(t.lookup(ip("10.0.0.2"), "blue"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn reverse_lookups() {
        let t = sample();
        let client = ip("10.0.0.2");
        assert_eq!(t.reverse(client, ip("10.0.0.5")), Some("web.1.abc".into()));
        assert_eq!(t.reverse(client, ip("10.0.0.6")), Some("web.2.def".into()));
        assert_eq!(t.reverse(client, ip("10.0.0.2")), Some("client".into()));
        // Not in the client's networks.
        assert_eq!(t.reverse(client, ip("10.1.0.7")), None);
        assert_eq!(t.reverse(ip("10.1.0.7"), ip("10.1.0.7")), Some("db".into()));
        // Unknown client or address.
        assert_eq!(t.reverse(ip("192.168.1.1"), ip("10.0.0.5")), None);
        assert_eq!(t.reverse(client, ip("8.8.8.8")), None);
    }

    #[test]
    fn duplicate_and_empty_names_are_dropped() {
        let t = DnsTable::new();
        t.set_endpoint(
            "a/n",
            "n",
            ip("10.0.0.2"),
            names(&["", "A", "a.", " a ", "b"]),
        );
        assert_eq!(t.reverse(ip("10.0.0.2"), ip("10.0.0.2")), Some("a".into()));
        assert_eq!(t.lookup(ip("10.0.0.2"), "a"), Some(vec![ip("10.0.0.2")]));
        assert_eq!(t.lookup(ip("10.0.0.2"), ""), None);
    }
}
