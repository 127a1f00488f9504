//! IP address management: pure, no I/O.
//!
//! - Address pools hand out one subnet per network. The defaults are Docker's: `172.17.0.0/16`
//!   (the default bridge network gets it when it is free), then the /16s of `172.18`–`172.31`,
//!   then `192.168.0.0/16` cut into /20s. A subnet never overlaps another network's subnet or any
//!   of the host's routes (the caller reads the routes and passes them in as data; the default
//!   route `0.0.0.0/0` is ignored, as Docker does).
//! - The gateway is the first host address of the subnet unless `--gateway` says otherwise.
//! - Container addresses are handed out round-robin from a cursor inside the subnet (or its
//!   `ip_range`), so a released address is not reused before the range wraps around: a
//!   restarted container does not inherit a stale ARP entry that still points at the old one.
//!   The network, broadcast and gateway addresses are never handed out.
//!
//! Everything here is serde-serialisable so that the agent can persist it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network in CIDR form whose host bits are zero (`10.1.0.0/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A network from an address and a prefix length; host bits are cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        if prefix > 32 {
            return Err(IpamError::Parse(format!(
                "{addr}/{prefix}: prefix length must be at most 32"
            )));
        }
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// Like [`Ipv4Net::new`], but host bits set in `addr` are an error, not silently dropped.
    pub fn new_strict(addr: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        let net = Self::new(addr, prefix)?;
        if net.addr != addr {
            return Err(IpamError::Parse(format!(
                "{addr}/{prefix} has host bits set; did you mean {net}?"
            )));
        }
        Ok(net)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }

    /// Number of addresses in the network, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// True when `other` lies entirely inside `self`.
    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The first usable host address (network + 1).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }

    /// The subnets of length `prefix` inside this network, in address order.
    pub fn subnets(&self, prefix: u8) -> impl Iterator<Item = Ipv4Net> {
        let base = u32::from(self.addr) as u64;
        let (count, step) = if prefix < self.prefix || prefix > 32 {
            (0, 1)
        } else {
            (1u64 << (prefix - self.prefix), 1u64 << (32 - prefix as u32))
        };
        (0..count).map(move |i| Ipv4Net {
            addr: Ipv4Addr::from((base + i * step) as u32),
            prefix,
        })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = IpamError;

    /// Parses `a.b.c.d/n`; host bits must be zero.
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| IpamError::Parse(format!("{s:?}: expected CIDR like 10.1.0.0/16")))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| IpamError::Parse(format!("{s:?}: {a:?} is not an IPv4 address")))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| IpamError::Parse(format!("{s:?}: {p:?} is not a prefix length")))?;
        Self::new_strict(addr, prefix)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A pool of subnets: `base` cut into pieces of length `size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub base: Ipv4Net,
    pub size: u8,
}

impl AddressPool {
    pub fn new(base: Ipv4Net, size: u8) -> Result<Self, IpamError> {
        if size < base.prefix() || size > 30 {
            return Err(IpamError::Parse(format!(
                "pool {base}: subnet size /{size} must be between /{} and /30",
                base.prefix()
            )));
        }
        Ok(Self { base, size })
    }

    /// Docker's default pools: 172.17.0.0/16, the /16s of 172.18–31, then 192.168.0.0/16 in /20s.
    pub fn defaults() -> Vec<AddressPool> {
        let p = |s: &str, size| AddressPool {
            base: s.parse().expect("valid default pool"),
            size,
        };
        vec![
            p("172.17.0.0/16", 16),
            p("172.18.0.0/15", 16),
            p("172.20.0.0/14", 16),
            p("172.24.0.0/13", 16),
            p("192.168.0.0/16", 20),
        ]
    }
}

/// What a network asks of IPAM (`--subnet`, `--gateway`, `--ip-range`); all optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRequest {
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
}

/// One network's address space and its live allocations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAddresses {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Net>,
    /// Live allocations: address → owner (an attachment key).
    pub allocated: BTreeMap<Ipv4Addr, String>,
    /// Where the next search starts (round-robin, so released addresses rest a while).
    cursor: u32,
}

impl NetworkAddresses {
    fn range(&self) -> Ipv4Net {
        self.ip_range.unwrap_or(self.subnet)
    }

    fn usable(&self, ip: Ipv4Addr) -> bool {
        self.range().contains(ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.gateway
    }
}

/// Errors of IPAM: they say what clashes with what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid address: {0}")]
    Parse(String),
    #[error("no network {0:?} in IPAM")]
    UnknownNetwork(String),
    #[error("network {0:?} already has a subnet")]
    DuplicateNetwork(String),
    #[error("all address pools are used up: no free subnet that overlaps neither another network nor a host route")]
    PoolsExhausted,
    #[error("subnet {subnet} overlaps subnet {other_subnet} of network {other_network:?}")]
    OverlapsNetwork {
        subnet: Ipv4Net,
        other_network: String,
        other_subnet: Ipv4Net,
    },
    #[error("subnet {subnet} overlaps the host route to {route}")]
    OverlapsRoute { subnet: Ipv4Net, route: Ipv4Net },
    #[error(
        "subnet {0} is too small: it needs at least a /30 (network, gateway, one host, broadcast)"
    )]
    SubnetTooSmall(Ipv4Net),
    #[error("gateway {gateway} is not inside subnet {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("gateway {gateway} is the network or broadcast address of {subnet}")]
    GatewayReserved { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("--gateway and --ip-range need --subnet")]
    NeedsSubnet,
    #[error("ip range {range} is not inside subnet {subnet}")]
    RangeOutsideSubnet { range: Ipv4Net, subnet: Ipv4Net },
    #[error("no free address left in {range} of network {network:?}")]
    AddressesExhausted { network: String, range: Ipv4Net },
    #[error("address {ip} is already in use in network {network:?} (by {owner})")]
    AddressInUse {
        ip: Ipv4Addr,
        network: String,
        owner: String,
    },
    #[error("address {ip} cannot be given out in network {network:?} (outside {range}, or network/broadcast/gateway)")]
    AddressNotUsable {
        ip: Ipv4Addr,
        network: String,
        range: Ipv4Net,
    },
}

/// The IPAM state of a node: pools and one [`NetworkAddresses`] per network id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    pub pools: Vec<AddressPool>,
    pub networks: BTreeMap<String, NetworkAddresses>,
}

impl Default for Ipam {
    fn default() -> Self {
        Self::new(AddressPool::defaults())
    }
}

impl Ipam {
    pub fn new(pools: Vec<AddressPool>) -> Self {
        Self {
            pools,
            networks: BTreeMap::new(),
        }
    }

    /// Checks `subnet` against the other networks and the host routes.
    fn check_free(&self, subnet: &Ipv4Net, host_routes: &[Ipv4Net]) -> Result<(), IpamError> {
        for (id, n) in &self.networks {
            if n.subnet.overlaps(subnet) {
                return Err(IpamError::OverlapsNetwork {
                    subnet: *subnet,
                    other_network: id.clone(),
                    other_subnet: n.subnet,
                });
            }
        }
        for route in host_routes.iter().filter(|r| r.prefix() > 0) {
            if route.overlaps(subnet) {
                return Err(IpamError::OverlapsRoute {
                    subnet: *subnet,
                    route: *route,
                });
            }
        }
        Ok(())
    }

    /// Gives network `id` a subnet: the requested one after validation, or the first free one
    /// of the pools. Changes nothing on error.
    pub fn allocate_subnet(
        &mut self,
        id: &str,
        req: &SubnetRequest,
        host_routes: &[Ipv4Net],
    ) -> Result<&NetworkAddresses, IpamError> {
        if self.networks.contains_key(id) {
            return Err(IpamError::DuplicateNetwork(id.to_string()));
        }
        let subnet = match req.subnet {
            Some(subnet) => {
                if subnet.prefix() > 30 {
                    return Err(IpamError::SubnetTooSmall(subnet));
                }
                self.check_free(&subnet, host_routes)?;
                subnet
            }
            None => {
                if req.gateway.is_some() || req.ip_range.is_some() {
                    return Err(IpamError::NeedsSubnet);
                }
                self.pools
                    .iter()
                    .flat_map(|p| p.base.subnets(p.size))
                    .find(|s| self.check_free(s, host_routes).is_ok())
                    .ok_or(IpamError::PoolsExhausted)?
            }
        };
        let gateway = match req.gateway {
            Some(gw) => {
                if !subnet.contains(gw) {
                    return Err(IpamError::GatewayOutsideSubnet {
                        gateway: gw,
                        subnet,
                    });
                }
                if gw == subnet.network() || gw == subnet.broadcast() {
                    return Err(IpamError::GatewayReserved {
                        gateway: gw,
                        subnet,
                    });
                }
                gw
            }
            None => subnet.first_host(),
        };
        if let Some(range) = req.ip_range {
            if !subnet.contains_net(&range) {
                return Err(IpamError::RangeOutsideSubnet { range, subnet });
            }
        }
        let entry = NetworkAddresses {
            subnet,
            gateway,
            ip_range: req.ip_range,
            allocated: BTreeMap::new(),
            cursor: 0,
        };
        Ok(self.networks.entry(id.to_string()).or_insert(entry))
    }

    /// Forgets network `id` and all its allocations.
    pub fn release_subnet(&mut self, id: &str) -> Option<NetworkAddresses> {
        self.networks.remove(id)
    }

    pub fn network(&self, id: &str) -> Option<&NetworkAddresses> {
        self.networks.get(id)
    }

    /// Hands out the next free address of network `id` to `owner`.
    pub fn allocate_address(&mut self, id: &str, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let n = self
            .networks
            .get_mut(id)
            .ok_or_else(|| IpamError::UnknownNetwork(id.to_string()))?;
        let range = n.range();
        let size = range.size();
        let base = u32::from(range.network());
        for step in 0..size {
            let offset = ((n.cursor as u64 + step) % size) as u32;
            let ip = Ipv4Addr::from(base.wrapping_add(offset));
            if n.usable(ip) && !n.allocated.contains_key(&ip) {
                n.allocated.insert(ip, owner.to_string());
                n.cursor = ((offset as u64 + 1) % size) as u32;
                return Ok(ip);
            }
        }
        Err(IpamError::AddressesExhausted {
            network: id.to_string(),
            range,
        })
    }

    /// Reserves a specific address (`--ip`) of network `id` for `owner`: any host address of
    /// the subnet but the gateway, inside the ip range or not (as Docker does: the range is
    /// where the addresses it picks come from).
    pub fn allocate_specific(
        &mut self,
        id: &str,
        ip: Ipv4Addr,
        owner: &str,
    ) -> Result<(), IpamError> {
        let n = self
            .networks
            .get_mut(id)
            .ok_or_else(|| IpamError::UnknownNetwork(id.to_string()))?;
        if !n.subnet.contains(ip)
            || ip == n.subnet.network()
            || ip == n.subnet.broadcast()
            || ip == n.gateway
        {
            return Err(IpamError::AddressNotUsable {
                ip,
                network: id.to_string(),
                range: n.subnet,
            });
        }
        if let Some(o) = n.allocated.get(&ip) {
            return Err(IpamError::AddressInUse {
                ip,
                network: id.to_string(),
                owner: o.clone(),
            });
        }
        n.allocated.insert(ip, owner.to_string());
        Ok(())
    }

    /// Returns `ip` to network `id`; true when it was allocated.
    pub fn release_address(&mut self, id: &str, ip: Ipv4Addr) -> bool {
        self.networks
            .get_mut(id)
            .is_some_and(|n| n.allocated.remove(&ip).is_some())
    }

    /// Who holds `ip` in network `id`.
    pub fn owner(&self, id: &str, ip: Ipv4Addr) -> Option<&str> {
        self.networks
            .get(id)?
            .allocated
            .get(&ip)
            .map(String::as_str)
    }

    /// Returns `ip` to network `id` if `owner` still holds it (it may have been given back
    /// and handed out again meanwhile); true when it was released.
    pub fn release_if_owner(&mut self, id: &str, ip: Ipv4Addr, owner: &str) -> bool {
        match self.networks.get_mut(id) {
            Some(n) if n.allocated.get(&ip).is_some_and(|o| o == owner) => {
                n.allocated.remove(&ip);
                true
            }
            _ => false,
        }
    }

    /// Hands `ip` of network `id` from owner `from` to owner `to`; false (and no change) when
    /// `from` does not hold it.
    pub fn reassign(&mut self, id: &str, ip: Ipv4Addr, from: &str, to: &str) -> bool {
        match self
            .networks
            .get_mut(id)
            .and_then(|n| n.allocated.get_mut(&ip))
        {
            Some(o) if o == from => {
                *o = to.to_string();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn network_cidr_parse_and_maths() {
        let n = net("10.1.0.0/16");
        assert_eq!(n.broadcast(), ip("10.1.255.255"));
        assert_eq!(n.first_host(), ip("10.1.0.1"));
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.0")));
        assert!(n.overlaps(&net("10.0.0.0/8")));
        assert!(!n.overlaps(&net("10.2.0.0/16")));
        let err = "10.1.0.1/16".parse::<Ipv4Net>().unwrap_err();
        assert!(
            err.to_string().contains("did you mean 10.1.0.0/16"),
            "{err}"
        );
        assert!("10.1.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.1.0.0/33".parse::<Ipv4Net>().is_err());
        assert_eq!(net("192.168.0.0/16").subnets(20).count(), 16);
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"10.1.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Net>(&json).unwrap(), n);
    }

    #[test]
    fn default_pools_like_docker() {
        let mut ipam = Ipam::default();
        let a = ipam
            .allocate_subnet("bridge", &SubnetRequest::default(), &[])
            .unwrap()
            .clone();
        assert_eq!(a.subnet, net("172.17.0.0/16"));
        assert_eq!(a.gateway, ip("172.17.0.1"));
        let b = ipam
            .allocate_subnet("n2", &SubnetRequest::default(), &[])
            .unwrap()
            .clone();
        assert_eq!(b.subnet, net("172.18.0.0/16"));
        // 172.17..=172.31 are 15 /16s; then 192.168.x.0/20.
        for i in 3..=15 {
            ipam.allocate_subnet(&format!("n{i}"), &SubnetRequest::default(), &[])
                .unwrap();
        }
        let c = ipam
            .allocate_subnet("n16", &SubnetRequest::default(), &[])
            .unwrap();
        assert_eq!(c.subnet, net("192.168.0.0/20"));
    }

    #[test]
    fn skips_host_routes_and_ignores_default_route() {
        let mut ipam = Ipam::default();
        let routes = [net("0.0.0.0/0"), net("172.17.0.0/16"), net("172.18.5.0/24")];
        let a = ipam
            .allocate_subnet("a", &SubnetRequest::default(), &routes)
            .unwrap();
        assert_eq!(a.subnet, net("172.19.0.0/16"));
    }

    #[test]
    fn custom_subnet_validation_errors_name_the_clash() {
        let mut ipam = Ipam::default();
        let req = |s: &str| SubnetRequest {
            subnet: Some(net(s)),
            ..Default::default()
        };
        ipam.allocate_subnet("front", &req("10.10.0.0/24"), &[])
            .unwrap();
        let e = ipam
            .allocate_subnet("back", &req("10.10.0.0/16"), &[])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 10.10.0.0/16 overlaps subnet 10.10.0.0/24 of network \"front\""
        );
        let e = ipam
            .allocate_subnet("back", &req("192.0.2.128/25"), &[net("192.0.2.0/24")])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 192.0.2.128/25 overlaps the host route to 192.0.2.0/24"
        );
        let e = ipam
            .allocate_subnet(
                "back",
                &SubnetRequest {
                    subnet: Some(net("10.20.0.0/24")),
                    gateway: Some(ip("10.21.0.1")),
                    ip_range: None,
                },
                &[],
            )
            .unwrap_err();
        assert!(matches!(e, IpamError::GatewayOutsideSubnet { .. }), "{e}");
        let e = ipam
            .allocate_subnet(
                "back",
                &SubnetRequest {
                    subnet: Some(net("10.20.0.0/24")),
                    gateway: Some(ip("10.20.0.255")),
                    ip_range: None,
                },
                &[],
            )
            .unwrap_err();
        assert!(matches!(e, IpamError::GatewayReserved { .. }), "{e}");
        let e = ipam
            .allocate_subnet(
                "back",
                &SubnetRequest {
                    subnet: Some(net("10.20.0.0/24")),
                    gateway: None,
                    ip_range: Some(net("10.20.1.0/28")),
                },
                &[],
            )
            .unwrap_err();
        assert!(matches!(e, IpamError::RangeOutsideSubnet { .. }), "{e}");
        let e = ipam
            .allocate_subnet("back", &req("10.20.0.0/31"), &[])
            .unwrap_err();
        assert!(matches!(e, IpamError::SubnetTooSmall(_)), "{e}");
        let e = ipam
            .allocate_subnet(
                "back",
                &SubnetRequest {
                    gateway: Some(ip("10.20.0.1")),
                    ..Default::default()
                },
                &[],
            )
            .unwrap_err();
        assert_eq!(e, IpamError::NeedsSubnet);
        // Nothing was half-applied by the failures.
        assert_eq!(ipam.networks.len(), 1);
        let ok = ipam
            .allocate_subnet(
                "back",
                &SubnetRequest {
                    subnet: Some(net("10.20.0.0/24")),
                    gateway: Some(ip("10.20.0.254")),
                    ip_range: Some(net("10.20.0.128/25")),
                },
                &[],
            )
            .unwrap();
        assert_eq!(ok.gateway, ip("10.20.0.254"));
    }

    #[test]
    fn allocation_release_exhaustion_and_no_immediate_reuse() {
        let mut ipam = Ipam::new(vec![]);
        ipam.allocate_subnet(
            "n",
            &SubnetRequest {
                subnet: Some(net("10.0.0.0/29")),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        // /29: .0 network, .1 gateway, .7 broadcast → .2 ..= .6 usable.
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate_address("n", &format!("c{i}")).unwrap())
            .collect();
        assert_eq!(got[0], ip("10.0.0.2"));
        assert_eq!(got[4], ip("10.0.0.6"));
        let e = ipam.allocate_address("n", "c5").unwrap_err();
        assert!(matches!(e, IpamError::AddressesExhausted { .. }), "{e}");
        assert!(ipam.release_address("n", ip("10.0.0.3")));
        assert!(!ipam.release_address("n", ip("10.0.0.3")));
        assert_eq!(ipam.allocate_address("n", "c6").unwrap(), ip("10.0.0.3"));
        // Not immediately reused while other addresses are free.
        assert!(ipam.release_address("n", ip("10.0.0.4")));
        assert!(ipam.release_address("n", ip("10.0.0.5")));
        assert_eq!(ipam.allocate_address("n", "c7").unwrap(), ip("10.0.0.4"));
        assert!(ipam.release_address("n", ip("10.0.0.4")));
        assert_eq!(ipam.allocate_address("n", "c8").unwrap(), ip("10.0.0.5"));
        assert_eq!(ipam.allocate_address("n", "c9").unwrap(), ip("10.0.0.4"));
        assert!(matches!(
            ipam.allocate_address("x", "c"),
            Err(IpamError::UnknownNetwork(_))
        ));
    }

    #[test]
    fn ip_range_and_specific_addresses() {
        let mut ipam = Ipam::new(vec![]);
        ipam.allocate_subnet(
            "n",
            &SubnetRequest {
                subnet: Some(net("10.0.0.0/24")),
                gateway: None,
                ip_range: Some(net("10.0.0.0/30")),
            },
            &[],
        )
        .unwrap();
        // .0 is the network address and .1 the gateway, though both are inside the range.
        assert_eq!(ipam.allocate_address("n", "a").unwrap(), ip("10.0.0.2"));
        assert_eq!(ipam.allocate_address("n", "b").unwrap(), ip("10.0.0.3"));
        assert!(ipam.allocate_address("n", "c").is_err());
        assert!(matches!(
            ipam.allocate_specific("n", ip("10.0.0.2"), "c"),
            Err(IpamError::AddressInUse { .. })
        ));
        assert!(matches!(
            ipam.allocate_specific("n", ip("10.0.0.1"), "c"),
            Err(IpamError::AddressNotUsable { .. })
        ));
        // Outside the range but inside the subnet: allowed (Docker's `--ip` too).
        ipam.allocate_specific("n", ip("10.0.0.9"), "c").unwrap();
        assert!(ipam.allocate_specific("n", ip("10.0.1.9"), "c").is_err());
        assert!(ipam.allocate_specific("n", ip("10.0.0.255"), "c").is_err());
        assert!(ipam.release_address("n", ip("10.0.0.3")));
        ipam.allocate_specific("n", ip("10.0.0.3"), "c").unwrap();
    }

    #[test]
    fn owners_hand_over_and_release_only_what_they_hold() {
        let mut ipam = Ipam::default();
        ipam.allocate_subnet("n", &SubnetRequest::default(), &[])
            .unwrap();
        let a = ipam.allocate_address("n", "pool:1").unwrap();
        assert!(!ipam.reassign("n", a, "pool:2", "c1"), "not pool:2's");
        assert!(ipam.reassign("n", a, "pool:1", "c1"));
        assert_eq!(ipam.owner("n", a), Some("c1"));
        assert!(!ipam.release_if_owner("n", a, "pool:1"));
        assert!(!ipam.release_if_owner("gone", a, "c1"));
        assert!(ipam.release_if_owner("n", a, "c1"));
        assert_eq!(ipam.owner("n", a), None);
        assert!(!ipam.reassign("n", a, "c1", "c2"), "free now");
    }

    #[test]
    fn state_roundtrips_through_json() {
        let mut ipam = Ipam::default();
        ipam.allocate_subnet("n", &SubnetRequest::default(), &[])
            .unwrap();
        ipam.allocate_address("n", "c1").unwrap();
        let json = serde_json::to_string(&ipam).unwrap();
        let back: Ipam = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ipam);
    }

    proptest! {
        #[test]
        fn live_allocations_are_distinct_and_usable(
            prefix in 24u8..=29,
            third in 0u8..=255,
            ops in proptest::collection::vec((any::<bool>(), any::<u8>()), 1..300),
        ) {
            let subnet = Ipv4Net::new(Ipv4Addr::new(10, 9, third, 0), prefix).unwrap();
            let mut ipam = Ipam::new(vec![]);
            ipam.allocate_subnet("n", &SubnetRequest { subnet: Some(subnet), ..Default::default() }, &[]).unwrap();
            let gw = subnet.first_host();
            let mut live: Vec<Ipv4Addr> = Vec::new();
            for (i, (alloc, pick)) in ops.into_iter().enumerate() {
                if alloc || live.is_empty() {
                    match ipam.allocate_address("n", &format!("c{i}")) {
                        Ok(a) => live.push(a),
                        Err(IpamError::AddressesExhausted { .. }) => {
                            prop_assert_eq!(live.len() as u64, subnet.size() - 3);
                        }
                        Err(e) => prop_assert!(false, "{}", e),
                    }
                } else {
                    let a = live.swap_remove(pick as usize % live.len());
                    prop_assert!(ipam.release_address("n", a));
                }
                let set: HashSet<_> = live.iter().collect();
                prop_assert_eq!(set.len(), live.len());
                for a in &live {
                    prop_assert!(subnet.contains(*a));
                    prop_assert!(*a != gw && *a != subnet.network() && *a != subnet.broadcast());
                }
                prop_assert_eq!(ipam.network("n").unwrap().allocated.len(), live.len());
            }
        }

        #[test]
        fn subnets_never_overlap(routes in proptest::collection::vec((0u8..=255, 8u8..=24), 0..8), n in 1usize..30) {
            let routes: Vec<Ipv4Net> = routes
                .into_iter()
                .map(|(b, p)| Ipv4Net::new(Ipv4Addr::new(172, 16 + b % 16, b, 0), p).unwrap())
                .collect();
            let mut ipam = Ipam::default();
            let mut got = Vec::new();
            for i in 0..n {
                match ipam.allocate_subnet(&format!("n{i}"), &SubnetRequest::default(), &routes) {
                    Ok(a) => got.push(a.subnet),
                    Err(IpamError::PoolsExhausted) => break,
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }
            for (i, a) in got.iter().enumerate() {
                for r in &routes { prop_assert!(!a.overlaps(r), "{} overlaps route {}", a, r); }
                for b in &got[i + 1..] { prop_assert!(!a.overlaps(b)); }
            }
        }
    }
}
