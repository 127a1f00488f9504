//! Container networking: bridge networks like Docker's `bridge` driver, and the node side of
//! overlay networks (VXLAN) spanning the cluster.
//!
//! - [`ipam`]: pure address management (pools, subnets, container addresses); serde state.
//! - [`NetOps`]: the host operations (links, addresses, routes, netns files, nftables,
//!   sysctls) behind one trait; [`RealNetOps`] does them for real (rtnetlink 0.24, on dedicated
//!   threads that `setns` into the target namespace), [`FakeNetOps`] in memory for unit tests.
//! - [`firewall`]: the nftables rules (isolation between networks, egress masquerade, internal
//!   networks), generated as text and loaded atomically with `nft -f` (Debian package
//!   `nftables`).
//! - [`overlay`]: overlay networks: a bridge network plus a vxlan device, whose FDB and
//!   neighbour entries are programmed from the remote endpoints the cluster manager sends (no
//!   learning, no flooding); the pure diff of peer sets.
//! - [`NetworkManager`]: the async API the agent uses: create/remove networks, attach/detach
//!   containers, release a container, set an overlay network's peers, reconcile after a
//!   restart. Its state (networks, IPAM, attachments) is persisted as JSON (`network.json`) in
//!   the agent's data dir; overlay peers are not (the cluster manager resends them).
//!
//! How a container plugs in: [`NetworkManager::attach`] creates a persistent network namespace
//! file for the container (`<run_dir>/netns/<container id>`, like `ip netns add`) the first
//! time, and returns its path; the runtime joins it (`NetworkMode::Join(path)`) with `setns`.
//! With the warm pool on ([`pool`], [`NetworkManager::enable_pool`]; the agent's executor turns
//! it on), the first attach to a bridge network takes a namespace made beforehand instead
//! (`<run_dir>/netns/pool:<key>`, already plugged in), and a release leaves the deletion of the
//! namespace and links to the pool's worker thread: neither is on a container's start or stop
//! path.
//!
//! Choices, Docker's unless said otherwise:
//! - a network's bridge is `<prefix>-<first hex of the network id>` (prefix `sh`; ≤ 15 chars);
//!   a host-side veth is `v<prefix><hex>`, its peer `c<prefix><hex>` until it is moved into the
//!   container and renamed `eth0`, `eth1`, … in attach order;
//! - a container's MAC is `02:42:` + its IPv4 address, as Docker does;
//! - the default route goes through the first non-internal network a container is attached to;
//!   if that attachment goes, the next non-internal one takes over. Internal networks never get
//!   a default route and their bridge is firewalled off from every other interface;
//! - `net.ipv4.ip_forward` is set to 1 when the first non-internal network is created and it was
//!   0; that is recorded in the state, and undone when the last non-internal network goes;
//! - on a host where Docker runs, ACCEPT rules for our bridges go into Docker's `DOCKER-USER`
//!   chain (see [`firewall`]).
//!
//! Not here: IPv6, encrypted overlays.

pub mod firewall;
pub mod ipam;
mod manager;
mod netlink;
mod ops;
pub mod overlay;
pub mod pool;

use std::net::Ipv4Addr;

pub use ipam::{AddressPool, Ipam, IpamError, Ipv4Net, SubnetRequest};
pub use manager::{
    Attachment, ContainerNet, Network, NetworkConfig, NetworkManager, NetworkSpec, NetworkState,
    ReconcileReport,
};
pub use netlink::{create_netns_file, delete_netns_file, RealNetOps};
pub use ops::{AddrInfo, FakeNetOps, FakeState, LinkInfo, NetOps, VethPlug, VxlanLink};
pub use overlay::{OverlayEntries, OverlayPeer, OverlaySpec};
pub use pool::{PoolPolicy, Retiring, Sandbox};

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("firewall: {0}")]
    Firewall(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Checks a resource name prefix: 1–5 characters of `[a-z0-9]`, so that every name built from
/// it fits in 15 characters.
pub fn validate_prefix(prefix: &str) -> Result<(), NetError> {
    if prefix.is_empty()
        || prefix.len() > 5
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(NetError::Invalid(format!(
            "network name prefix {prefix:?} must be 1 to 5 characters of [a-z0-9]"
        )));
    }
    Ok(())
}

/// The bridge of network `id`: `<prefix>-<hex>`, at most 15 characters.
pub fn bridge_name(prefix: &str, id: &str) -> String {
    let n = (MAX_IFNAME - 1 - prefix.len()).min(12).min(id.len());
    format!("{prefix}-{}", &id[..n])
}

/// The host end and the (temporary) container end of an attachment's veth pair, from a random
/// hex key: `v<prefix><hex>` and `c<prefix><hex>`, 15 characters at most.
pub fn veth_names(prefix: &str, key: &str) -> (String, String) {
    let n = (MAX_IFNAME - 1 - prefix.len()).min(key.len());
    (
        format!("v{prefix}{}", &key[..n]),
        format!("c{prefix}{}", &key[..n]),
    )
}

/// Docker's MAC for a container address: `02:42:` followed by the four bytes of the IPv4.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `02:42:ac:11:00:02` form.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_ifnamsiz() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(bridge_name("sh", id), "sh-0123456789ab");
        assert_eq!(bridge_name("sh", id).len(), 15);
        assert_eq!(bridge_name("t1234", id), "t1234-012345678");
        assert_eq!(bridge_name("t1234", id).len(), 15);
        let (h, p) = veth_names("sh", id);
        assert_eq!(h, "vsh0123456789ab");
        assert_eq!(p, "csh0123456789ab");
        let (h, p) = veth_names("t1234", id);
        assert!(h.len() <= 15 && p.len() <= 15 && h.starts_with("vt1234"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("sh").is_ok());
        assert!(validate_prefix("t0a9z").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("toolong").is_err());
        assert!(validate_prefix("a-b").is_err());
        assert!(validate_prefix("AB").is_err());
    }

    #[test]
    fn docker_style_mac() {
        let mac = mac_for_ip(Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(format_mac(mac), "02:42:ac:11:00:02");
    }
}
