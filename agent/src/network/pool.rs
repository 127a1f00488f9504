//! Warm sandboxes: the network namespaces of containers that have not started yet.
//!
//! Plumbing a container into a bridge network costs tens of milliseconds of kernel work
//! (a namespace, a veth pair, its address and route, enslaving it to the bridge), and so does
//! taking it apart again. A container start should not wait for either. So, once a bridge
//! network has been used, the manager keeps a few [`Sandbox`]es of it ready: a netns file
//! (`<run_dir>/netns/pool:<key>`, `:` being no container id's character) with `lo` up and
//! `eth0` plugged into the bridge, with an address from IPAM, its MAC, the network's MTU and
//! (unless the network is internal) the default route. A container whose first network is
//! that one, with no address of its own asked for, takes a sandbox as its namespace; a worker
//! thread makes another in the background. A released container's namespace and links are
//! [`Retiring`]: deleted by the same worker, and only then are its addresses given back (an
//! address never sits on two live links of a bridge).
//!
//! A sandbox is never reused: a namespace a container ran in keeps what the container did to
//! it (routes, rules, sockets), so it is deleted, never handed on.
//!
//! Sandboxes and retiring namespaces are part of the persisted state, so that a restart (and
//! `network rm`, which drains a network's sandboxes first) finds and removes them. This module
//! is the pure part: the types and what the worker should do next.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A ready network namespace plugged into one bridge network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Random hex: the netns file's and the veth's names derive from it.
    pub key: String,
    pub network_id: String,
    pub netns_path: PathBuf,
    /// The host end of its veth, on the network's bridge.
    pub host_ifname: String,
    /// The address of its `eth0`, held in IPAM by [`Sandbox::owner`].
    pub ip: Ipv4Addr,
    /// True when the default route through the network's gateway is set (not internal).
    pub default_route: bool,
}

impl Sandbox {
    /// The IPAM owner of a sandbox's address until a container takes it.
    pub fn owner(&self) -> String {
        owner_of(&self.key)
    }
}

/// The IPAM owner name of sandbox `key`.
pub fn owner_of(key: &str) -> String {
    format!("pool:{key}")
}

/// The netns file name of sandbox `key`.
pub fn netns_name(key: &str) -> String {
    format!("pool:{key}")
}

/// One link of a retiring namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringLink {
    pub network_id: String,
    pub host_ifname: String,
    /// The container end's name inside the namespace.
    pub ifname: String,
    pub ip: Ipv4Addr,
}

/// A released container's (or an evicted sandbox's) namespace and links, to be deleted; its
/// addresses stay held by `owner` until they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    pub owner: String,
    pub netns_path: PathBuf,
    pub links: Vec<RetiringLink>,
}

impl Retiring {
    /// A sandbox that no container took.
    pub fn of_sandbox(s: &Sandbox) -> Self {
        Retiring {
            owner: s.owner(),
            netns_path: s.netns_path.clone(),
            links: vec![RetiringLink {
                network_id: s.network_id.clone(),
                host_ifname: s.host_ifname.clone(),
                ifname: "eth0".into(),
                ip: s.ip,
            }],
        }
    }
}

/// How many sandboxes, for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Ready sandboxes kept per network in use.
    pub size: usize,
    /// A network unused for this long has its sandboxes drained.
    pub keep_warm: Duration,
    /// After a failure to make one, the network's pool waits this long before trying again.
    pub retry_after: Duration,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            size: 2,
            keep_warm: Duration::from_secs(600),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// What the pool knows of one bridge network, for [`plan`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkUse {
    /// Sandboxes ready.
    pub ready: usize,
    /// Sandboxes being made.
    pub making: usize,
    /// The last attach that could have taken a sandbox.
    pub last_used: Option<Instant>,
    /// The last failure to make one.
    pub failed_at: Option<Instant>,
}

/// What the worker does next, by network id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Networks to make this many sandboxes for.
    pub make: BTreeMap<String, usize>,
    /// Networks whose ready sandboxes all go (unused for too long, or gone).
    pub drain: Vec<String>,
}

/// Decides, from each network's use, which pools to fill and which to drain. A network is
/// warm from an attach until `keep_warm` later; only warm networks have sandboxes, and only
/// up to `size` (ready and in the making). Pure.
pub fn plan(policy: &PoolPolicy, now: Instant, networks: &BTreeMap<String, NetworkUse>) -> Plan {
    let mut p = Plan::default();
    for (id, u) in networks {
        let warm = policy.size > 0
            && u.last_used
                .is_some_and(|t| now.saturating_duration_since(t) < policy.keep_warm);
        if !warm {
            if u.ready > 0 {
                p.drain.push(id.clone());
            }
            continue;
        }
        let backing_off = u
            .failed_at
            .is_some_and(|t| now.saturating_duration_since(t) < policy.retry_after);
        let missing = policy.size.saturating_sub(u.ready + u.making);
        if missing > 0 && !backing_off {
            p.make.insert(id.clone(), missing);
        }
    }
    p
}

/// Takes a ready sandbox of network `network_id` out of `pool`, the oldest first.
pub fn take(pool: &mut Vec<Sandbox>, network_id: &str) -> Option<Sandbox> {
    let i = pool.iter().position(|s| s.network_id == network_id)?;
    Some(pool.remove(i))
}

/// Takes the sandbox of network `network_id` that holds address `ip` out of `pool`, if one
/// does (a container asks for that address: the sandbox gives way).
pub fn take_holder(pool: &mut Vec<Sandbox>, network_id: &str, ip: Ipv4Addr) -> Option<Sandbox> {
    let i = pool
        .iter()
        .position(|s| s.network_id == network_id && s.ip == ip)?;
    Some(pool.remove(i))
}

/// When the worker should look again with nothing asked of it: when the first warm network
/// goes cold, or a back-off ends; `None` when nothing will change by itself.
pub fn next_wake(
    policy: &PoolPolicy,
    now: Instant,
    networks: &BTreeMap<String, NetworkUse>,
) -> Option<Duration> {
    networks
        .values()
        .flat_map(|u| {
            let cold = u
                .last_used
                .filter(|_| u.ready + u.making > 0)
                .map(|t| (t + policy.keep_warm).saturating_duration_since(now));
            let retry = u
                .failed_at
                .map(|t| (t + policy.retry_after).saturating_duration_since(now))
                .filter(|d| !d.is_zero());
            cold.into_iter().chain(retry)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(key: &str, net: &str, ip: &str) -> Sandbox {
        Sandbox {
            key: key.into(),
            network_id: net.into(),
            netns_path: PathBuf::from(format!("/run/netns/pool:{key}")),
            host_ifname: format!("vsh{key}"),
            ip: ip.parse().unwrap(),
            default_route: true,
        }
    }

    fn uses(v: &[(&str, NetworkUse)]) -> BTreeMap<String, NetworkUse> {
        v.iter().map(|(k, u)| (k.to_string(), *u)).collect()
    }

    #[test]
    fn warm_networks_are_filled_up_to_the_size() {
        let pol = PoolPolicy::default();
        let now = Instant::now();
        let used = Some(now);
        let p = plan(
            &pol,
            now,
            &uses(&[
                (
                    "empty",
                    NetworkUse {
                        last_used: used,
                        ..Default::default()
                    },
                ),
                (
                    "one",
                    NetworkUse {
                        ready: 1,
                        last_used: used,
                        ..Default::default()
                    },
                ),
                (
                    "in-flight",
                    NetworkUse {
                        ready: 1,
                        making: 1,
                        last_used: used,
                        ..Default::default()
                    },
                ),
                (
                    "full",
                    NetworkUse {
                        ready: 2,
                        last_used: used,
                        ..Default::default()
                    },
                ),
            ]),
        );
        assert_eq!(
            p.make,
            BTreeMap::from([("empty".to_string(), 2), ("one".to_string(), 1)])
        );
        assert!(p.drain.is_empty());
    }

    #[test]
    fn never_used_or_cold_networks_get_nothing_and_are_drained() {
        let pol = PoolPolicy::default();
        let now = Instant::now() + Duration::from_secs(3600);
        let long_ago = now - pol.keep_warm - Duration::from_secs(1);
        let p = plan(
            &pol,
            now,
            &uses(&[
                ("never", NetworkUse::default()),
                (
                    "cold",
                    NetworkUse {
                        ready: 2,
                        last_used: Some(long_ago),
                        ..Default::default()
                    },
                ),
                (
                    "cold-empty",
                    NetworkUse {
                        last_used: Some(long_ago),
                        ..Default::default()
                    },
                ),
            ]),
        );
        assert!(p.make.is_empty(), "{p:?}");
        assert_eq!(p.drain, ["cold"]);
        // A size of 0 turns the pool off: everything drains.
        let off = PoolPolicy { size: 0, ..pol };
        let p = plan(
            &off,
            now,
            &uses(&[(
                "warm",
                NetworkUse {
                    ready: 1,
                    last_used: Some(now),
                    ..Default::default()
                },
            )]),
        );
        assert_eq!(p.drain, ["warm"]);
        assert!(p.make.is_empty());
    }

    #[test]
    fn a_failure_backs_the_network_off_for_a_while() {
        let pol = PoolPolicy::default();
        let now = Instant::now() + Duration::from_secs(3600);
        let u = NetworkUse {
            last_used: Some(now),
            failed_at: Some(now - Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(plan(&pol, now, &uses(&[("n", u)])).make.is_empty());
        assert_eq!(
            next_wake(&pol, now, &uses(&[("n", u)])),
            Some(pol.retry_after - Duration::from_secs(1))
        );
        let later = now + pol.retry_after;
        assert_eq!(plan(&pol, later, &uses(&[("n", u)])).make["n"], 2);
    }

    #[test]
    fn the_worker_wakes_when_a_pool_goes_cold() {
        let pol = PoolPolicy::default();
        let now = Instant::now();
        let u = NetworkUse {
            ready: 2,
            last_used: Some(now - Duration::from_secs(100)),
            ..Default::default()
        };
        assert_eq!(
            next_wake(&pol, now, &uses(&[("n", u)])),
            Some(pol.keep_warm - Duration::from_secs(100))
        );
        // Nothing ready, nothing to wait for.
        let idle = NetworkUse {
            last_used: Some(now),
            ..Default::default()
        };
        assert_eq!(next_wake(&pol, now, &uses(&[("n", idle)])), None);
    }

    #[test]
    fn sandboxes_are_taken_oldest_first_and_by_address() {
        let mut pool = vec![
            sandbox("a", "n1", "10.0.0.2"),
            sandbox("b", "n2", "10.1.0.2"),
            sandbox("c", "n1", "10.0.0.3"),
        ];
        assert_eq!(take(&mut pool, "n1").unwrap().key, "a");
        assert!(take(&mut pool, "n3").is_none());
        assert!(take_holder(&mut pool, "n1", "10.1.0.2".parse().unwrap()).is_none());
        assert_eq!(
            take_holder(&mut pool, "n1", "10.0.0.3".parse().unwrap())
                .unwrap()
                .key,
            "c"
        );
        assert_eq!(pool.len(), 1);
        let r = Retiring::of_sandbox(&pool[0]);
        assert_eq!(r.owner, "pool:b");
        assert_eq!(r.links[0].host_ifname, "vshb");
    }
}
