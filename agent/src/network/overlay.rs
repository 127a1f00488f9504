//! Overlay networks (`network create --driver overlay`): one layer-2 segment spanning the
//! cluster, carried between nodes by VXLAN. Pure logic only; the manager does the I/O.
//!
//! On each node an overlay network is a bridge network (same bridge naming; the SAME gateway
//! address on every node, a distributed gateway, so that each container leaves the cluster
//! through its own node) plus a kernel vxlan device enslaved to the bridge:
//! `x<prefix><hex>`, id = the network's VNI, UDP port 4789, `nolearning`, `proxy`.
//!
//! Nothing is learnt and nothing is flooded: the managers know every task's address and node,
//! and send each agent the complete set of remote endpoints ([`OverlayPeer`]) of its overlay
//! networks. For each peer the driver programs, on the vxlan device,
//! - one FDB entry: the peer's MAC (`02:42:` + its IPv4, as for every container) → the
//!   underlay address of its node (`bridge fdb add MAC dev X dst VTEP self permanent`);
//! - one neighbour entry: its IPv4 → its MAC (`ip neigh add IP lladdr MAC dev X nud
//!   permanent`), from which the vxlan device answers ARP requests for remote containers
//!   itself (`proxy`), so that no ARP broadcast ever leaves the node.
//!
//! There is no all-zero FDB entry: broadcasts and unknown unicast stay on the node.
//!
//! Addresses: the cluster manager picks the subnet, gateway and VNI of an overlay network and
//! every task's address on it, so a node's IPAM never picks one itself (an attach without an
//! address is refused). The MTU defaults to the node's default minus [`VXLAN_OVERHEAD`].
//! The firewall treats the bridge as any other: isolation from other networks, egress
//! masqueraded through the node unless `internal`; frames between the bridge and its vxlan
//! port are bridged (in = out = the bridge), and the tunnel's UDP packets are the host's own.
//! [`diff`] computes what to add and remove when a new set arrives, from what was programmed,
//! or after a daemon restart (the set is not persisted: the manager resends it) from what the
//! kernel lists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::ipam::Ipv4Net;
use super::mac_for_ip;

/// The UDP port of VXLAN (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN adds to each frame on an IPv4 underlay (outer IPv4 20 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14): an overlay network's default MTU is 1500 − 50.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Default MTU of an overlay network's bridge and container links.
pub const OVERLAY_MTU: u32 = 1500 - VXLAN_OVERHEAD;

/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// What makes a network an overlay network: its VXLAN network identifier, the same on every
/// node (the manager picks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    pub vni: u32,
}

/// A container on another node: its address on the overlay network and the underlay address
/// of its node (the VXLAN tunnel endpoint). Its MAC is derived: `02:42:` + `ip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct OverlayPeer {
    pub ip: Ipv4Addr,
    pub vtep: Ipv4Addr,
}

impl OverlayPeer {
    pub fn mac(&self) -> [u8; 6] {
        mac_for_ip(self.ip)
    }
}

/// The vxlan device of the network whose bridge is `bridge` (`<prefix>-<hex>`):
/// `x<prefix><hex>`, as long as the bridge's name, so at most 15 characters.
pub fn vxlan_name(bridge: &str) -> String {
    format!("x{}", bridge.replacen('-', "", 1))
}

/// Checks a VNI: 1 to 2^24 − 1.
pub fn check_vni(vni: u32) -> Result<(), String> {
    if vni == 0 || vni > MAX_VNI {
        return Err(format!("VNI {vni} must be between 1 and {MAX_VNI}"));
    }
    Ok(())
}

/// Checks a complete peer set of one overlay network and returns it as a set: every peer's
/// address is a host address of `subnet` other than the gateway, every address appears once,
/// every tunnel endpoint is a unicast address.
pub fn check_peers(
    network: &str,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    peers: &[OverlayPeer],
) -> Result<BTreeSet<OverlayPeer>, String> {
    let mut ips = BTreeSet::new();
    for p in peers {
        if !subnet.contains(p.ip)
            || p.ip == subnet.network()
            || p.ip == subnet.broadcast()
            || p.ip == gateway
        {
            return Err(format!(
                "peer address {} is not a container address of overlay network {network:?} \
                 (subnet {subnet}, gateway {gateway})",
                p.ip
            ));
        }
        check_vtep(p)?;
        if !ips.insert(p.ip) {
            return Err(format!(
                "peer address {} of overlay network {network:?} is given twice",
                p.ip
            ));
        }
    }
    Ok(peers.iter().copied().collect())
}

/// A tunnel endpoint must be a unicast address a packet can be sent to.
fn check_vtep(p: &OverlayPeer) -> Result<(), String> {
    let v = p.vtep;
    if v.is_unspecified() || v.is_multicast() || v.is_broadcast() {
        return Err(format!(
            "peer {}: {v} is not a unicast underlay address",
            p.ip
        ));
    }
    Ok(())
}

/// The overlay entries of a vxlan device: what the kernel holds, or what a peer set needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayEntries {
    /// Unicast FDB entries with a remote: `(MAC, tunnel endpoint)`; a MAC with several remotes
    /// (which we never make) appears once per remote.
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
    /// Neighbour entries: address → MAC.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
}

impl OverlayEntries {
    /// The entries that make `peers` reachable: per peer one FDB and one neighbour entry.
    pub fn of(peers: &BTreeSet<OverlayPeer>) -> Self {
        Self {
            fdb: peers.iter().map(|p| (p.mac(), p.vtep)).collect(),
            neighbours: peers.iter().map(|p| (p.ip, p.mac())).collect(),
        }
    }
}

/// What to change on a vxlan device to go from the entries it has to the ones it needs.
/// Apply in field order: deletions first, so that a peer that moved to another node has its
/// old FDB entry gone before the new one is made; its neighbour entry (address → MAC,
/// unchanged) stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    pub fdb_del: Vec<([u8; 6], Ipv4Addr)>,
    pub neigh_del: Vec<Ipv4Addr>,
    pub fdb_add: Vec<([u8; 6], Ipv4Addr)>,
    /// Also an entry whose MAC is wrong: an add replaces it.
    pub neigh_add: Vec<(Ipv4Addr, [u8; 6])>,
}

impl PeerDiff {
    pub fn is_empty(&self) -> bool {
        self.fdb_del.is_empty()
            && self.neigh_del.is_empty()
            && self.fdb_add.is_empty()
            && self.neigh_add.is_empty()
    }
}

/// The changes that turn the entries a device has into those it needs, and nothing more.
/// Every entry on the device counts: after a crash between two steps, or a restart, `have` is
/// what the kernel lists, and whatever it holds beyond the wanted peers goes.
pub fn diff(have: &OverlayEntries, want: &OverlayEntries) -> PeerDiff {
    PeerDiff {
        fdb_del: have.fdb.difference(&want.fdb).copied().collect(),
        neigh_del: have
            .neighbours
            .keys()
            .filter(|ip| !want.neighbours.contains_key(ip))
            .copied()
            .collect(),
        fdb_add: want.fdb.difference(&have.fdb).copied().collect(),
        neigh_add: want
            .neighbours
            .iter()
            .filter(|(ip, mac)| have.neighbours.get(ip) != Some(mac))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn peer(a: &str, v: &str) -> OverlayPeer {
        OverlayPeer {
            ip: ip(a),
            vtep: ip(v),
        }
    }

    fn set(p: &[OverlayPeer]) -> BTreeSet<OverlayPeer> {
        p.iter().copied().collect()
    }

    #[test]
    fn vxlan_device_names_fit() {
        assert_eq!(vxlan_name("sh-0123456789ab"), "xsh0123456789ab");
        assert_eq!(vxlan_name("t1234-012345678"), "xt1234012345678");
        assert_eq!(vxlan_name("t1234-012345678").len(), 15);
    }

    #[test]
    fn vni_range() {
        assert!(check_vni(0).is_err());
        assert!(check_vni(1).is_ok());
        assert!(check_vni(MAX_VNI).is_ok());
        assert!(check_vni(MAX_VNI + 1).is_err());
    }

    #[test]
    fn peers_are_checked() {
        let subnet: Ipv4Net = "10.0.9.0/24".parse().unwrap();
        let gw = ip("10.0.9.1");
        let ok = [
            peer("10.0.9.2", "198.18.0.2"),
            peer("10.0.9.3", "198.18.0.3"),
        ];
        assert_eq!(check_peers("o", subnet, gw, &ok).unwrap(), set(&ok));
        for bad in [
            peer("10.0.8.2", "198.18.0.2"),
            peer("10.0.9.1", "198.18.0.2"),
            peer("10.0.9.0", "198.18.0.2"),
            peer("10.0.9.255", "198.18.0.2"),
            peer("10.0.9.2", "0.0.0.0"),
            peer("10.0.9.2", "239.1.1.1"),
        ] {
            assert!(check_peers("o", subnet, gw, &[bad]).is_err(), "{bad:?}");
        }
        let e = check_peers(
            "o",
            subnet,
            gw,
            &[
                peer("10.0.9.2", "198.18.0.2"),
                peer("10.0.9.2", "198.18.0.3"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    fn entries(p: &[OverlayPeer]) -> OverlayEntries {
        OverlayEntries::of(&set(p))
    }

    fn fdb(p: &[OverlayPeer]) -> Vec<([u8; 6], Ipv4Addr)> {
        p.iter().map(|p| (p.mac(), p.vtep)).collect()
    }

    fn neigh(p: &[OverlayPeer]) -> Vec<(Ipv4Addr, [u8; 6])> {
        p.iter().map(|p| (p.ip, p.mac())).collect()
    }

    #[test]
    fn diff_adds_and_removes_only_the_difference() {
        let a = peer("10.0.0.2", "198.18.0.2");
        let b = peer("10.0.0.3", "198.18.0.2");
        let c = peer("10.0.0.4", "198.18.0.3");
        assert!(diff(&entries(&[a, b]), &entries(&[b, a])).is_empty());
        assert_eq!(
            diff(&entries(&[]), &entries(&[a, b])),
            PeerDiff {
                fdb_add: fdb(&[a, b]),
                neigh_add: neigh(&[a, b]),
                ..Default::default()
            }
        );
        assert_eq!(
            diff(&entries(&[a, b]), &entries(&[b, c])),
            PeerDiff {
                fdb_del: fdb(&[a]),
                neigh_del: vec![a.ip],
                fdb_add: fdb(&[c]),
                neigh_add: neigh(&[c]),
            }
        );
        assert_eq!(
            diff(&entries(&[a, b]), &entries(&[])),
            PeerDiff {
                fdb_del: fdb(&[a, b]),
                neigh_del: vec![a.ip, b.ip],
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_peer_that_moved_node_only_changes_its_fdb_entry() {
        let old = peer("10.0.0.2", "198.18.0.2");
        let new = peer("10.0.0.2", "198.18.0.3");
        assert_eq!(
            diff(&entries(&[old]), &entries(&[new])),
            PeerDiff {
                fdb_del: fdb(&[old]),
                fdb_add: fdb(&[new]),
                ..Default::default()
            }
        );
    }

    #[test]
    fn whatever_the_kernel_holds_beyond_the_wanted_set_goes() {
        let a = peer("10.0.0.2", "198.18.0.2");
        let b = peer("10.0.0.5", "198.18.0.2");
        let mut have = entries(&[a]);
        // A second remote for a's MAC, an entry of another MAC form.
        have.fdb.insert((a.mac(), ip("198.18.0.7")));
        have.fdb.insert(([0x0a, 0, 0, 0, 0, 1], ip("198.18.0.9")));
        // b's neighbour entry without its FDB entry (a crash between the two steps), and a
        // neighbour with a wrong MAC.
        have.neighbours.insert(b.ip, b.mac());
        have.neighbours
            .insert(ip("10.0.0.6"), [0x0a, 0, 0, 0, 0, 2]);
        assert_eq!(
            diff(&have, &entries(&[a])),
            PeerDiff {
                fdb_del: vec![
                    (a.mac(), ip("198.18.0.7")),
                    ([0x0a, 0, 0, 0, 0, 1], ip("198.18.0.9"))
                ],
                neigh_del: vec![b.ip, ip("10.0.0.6")],
                ..Default::default()
            }
        );
        // Wanting b gives it its FDB entry; its neighbour entry stays. A wanted address whose
        // neighbour has the wrong MAC gets it replaced.
        let c = peer("10.0.0.6", "198.18.0.2");
        let d = diff(&have, &entries(&[a, b, c]));
        assert_eq!(d.fdb_add, fdb(&[b, c]));
        assert_eq!(d.neigh_add, neigh(&[c]));
        assert!(d.neigh_del.is_empty());
    }
}
