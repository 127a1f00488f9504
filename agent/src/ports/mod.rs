//! Published ports (`docker run -p [IP:]HOST:CONTAINER[/tcp|udp]`): kernel NAT with nftables.
//!
//! - [`parse_publish`]: Docker's `-p` syntax, pure;
//! - [`rules`]: the nftables table of the published ports, generated as text (pure) and loaded
//!   atomically with `nft -f` (the whole script is one transaction);
//! - [`PortSys`]: the host side (nft, sysctls, routes, port reservations) behind one small
//!   trait: [`RealPortSys`] for real, [`FakePortSys`] in memory for unit tests;
//! - [`PortManager`]: the synchronous API the agent uses (call it from `spawn_blocking`):
//!   publish / update / unpublish the ports of one *key* (a container id, later a service id)
//!   to a set of backends (container IPv4s), switch the backend set atomically (blue-green),
//!   reconcile after a restart. Its state is persisted as JSON (`ports.json`, written, fsync'd,
//!   renamed) in its state dir.
//!
//! # Mechanism: kernel NAT, not a userland proxy
//!
//! Measured with `port-bench` (bench/src/bin/port-bench.rs, same busybox servers on both
//! sides, 2 cores under load from other builds): over keep-alive connections our DNAT runs at
//! the speed of a direct connection to the container (≈ 150 k round trips/s, p50 26 µs), while
//! Docker's userland proxy (`docker-proxy`, what Docker uses for 127.0.0.1 by default) manages
//! 0.17–0.21× of that with 5–6× the p50 and p99 latency; with one connection per request the
//! server's fork dominates (every row within ±15 %) and the proxy still doubles the p99. DNAT
//! also keeps established connections on their conntrack binding when the rules change, which
//! is exactly the connection draining a blue-green switch needs. Docker does the same with
//! `userland-proxy=false`. A publish or unpublish costs one `nft -f` run, ≈ 20–35 ms here.
//!
//! One table of our own, `table ip <nft_table>` (default `shoal-ports`), replaced as a whole by
//! every change (`add` + `delete` + definition in one `nft -f` transaction: never a window
//! without rules, never a half-applied change):
//!
//! - `chain prerouting` (nat, hook prerouting, priority `dstnat` = -100) and `chain output`
//!   (nat, hook output, priority -100): `fib daddr type local jump published`, i.e. only
//!   packets addressed to one of the host's own addresses (127.0.0.1, the bridge gateways, the
//!   host's LAN address, ...). Prerouting catches other machines and containers (hairpin),
//!   output catches processes of the host itself.
//! - `chain published`: one rule per published port, `[ip daddr HOST_IP] tcp dport P dnat to
//!   BACKEND:CPORT`, or with several backends `dnat to numgen inc mod N map { 0 : B0, 1 : B1,
//!   ... } : CPORT` (round robin per new connection). A port with no backends has no rule: the
//!   reservation socket (below) is bound but not listening, so a TCP client gets a reset
//!   ("connection refused"), as after `unpublish`.
//! - `chain postrouting` (nat, hook postrouting, priority `srcnat`):
//!   - `ct status dnat ip saddr 127.0.0.0/8 oifname { bridges } masquerade`: a connection to
//!     127.0.0.1:P leaves through the bridge with source 127.0.0.1, which the container could
//!     not answer; it is rewritten to the bridge's address (Docker with `userland-proxy=false`
//!     does the same);
//!   - per backend subnet S: `ct status dnat ip saddr S ip daddr S masquerade`: the hairpin
//!     case, a container reaching a published port (of itself or of another container of the
//!     same bridge) through a host address. Without it the backend would answer the client
//!     directly over the bridge, from an address the client never connected to.
//! - `chain guard` (filter, hook prerouting, priority `raw`): `iifname { bridges } ip daddr
//!   127.0.0.0/8 drop`. Loopback DNAT needs `net.ipv4.conf.<bridge>.route_localnet=1` on the
//!   bridge of each backend (the kernel otherwise drops packets with a 127/8 source or
//!   destination on a non-loopback device as martians, in both directions); the manager sets
//!   it. That sysctl would also let a container send to 127.0.0.1 on the host (CVE-2020-8558):
//!   the guard drops those, before NAT (the answers of our masqueraded connections come back
//!   addressed to the bridge address and are only then de-NATed to 127.0.0.1, so they pass).
//!
//! The bridge and subnet of a backend are found in the host's routing table
//! (`/proc/net/route`, the directly connected route with the longest prefix).
//!
//! # Port reservations
//!
//! Every published host port is held by a socket of ours, *bound but not listening* (TCP) or
//! bound (UDP), on the mapping's host IP or 0.0.0.0: a host process that listens on the port
//! first makes `publish` fail ("port 8080/tcp is already in use on the host"), and a host
//! process that comes later gets `EADDRINUSE` instead of silently losing its traffic to the DNAT.
//! Random ports (host port 0) come from the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`), starting at a random offset, skipping ports used by
//! another key or that cannot be bound. The sockets die with the daemon; the nft table does not
//! (published ports keep working while the agent restarts), and [`PortManager::reconcile`]
//! re-acquires them.
//!
//! # What the rest of the agent must provide
//!
//! - `net.ipv4.ip_forward=1` for traffic from other machines and other containers (the network
//!   layer sets it with the first non-internal network);
//! - hairpin mode on each container's bridge port (`/sys/class/net/<host veth>/brport/
//!   hairpin_mode = 1`, Docker sets it with `userland-proxy=false`) for a container to reach
//!   *its own* published port through a host address when `br_netfilter` is loaded
//!   (`bridge-nf-call-iptables=1`, as wherever Docker runs): the DNAT then happens in the bridge
//!   path and the frame must leave by the port it came in. Other containers of the same bridge
//!   do not need it;
//! - ports of containers attached only to internal networks must not be published (Docker
//!   ignores `-p` there): the network firewall drops forwarded traffic to internal bridges, but
//!   the host's own connections (127.0.0.1) do not pass the forward hook;
//! - a container on network B reaching a port published by a container of network A goes
//!   through the host (DNAT) and then B→A, which the network firewall's isolation drops (read
//!   from firewall.rs, not tested here); a `ct status dnat accept` ahead of the isolation drops
//!   would make published ports public to every network, as they are to other machines.
//!
//! Hooks and priorities: our nat chains sit at `dstnat` (-100) / `srcnat` (100) like Docker's
//! and the network layer's masquerade; only the first nat chain that binds a connection
//! applies, and our rules only match our own reserved host ports, so the order among nat
//! tables does not matter. The guard is a filter chain at `raw` (-300) on prerouting.
//!
//! # Choices
//!
//! - a republish of the same key keeps a random host port that it had for the same
//!   (host IP, container port, protocol), so that an update does not move the port;
//! - identical duplicate mappings collapse into one; two mappings of one host port (same
//!   protocol, overlapping host IPs) to different container ports are an error;
//! - `-p 8000-8010:80` (pick one free host port of a range) and IPv6 host IPs are rejected with
//!   a clear error: not supported yet;
//! - the output chain only DNATs local destinations, so the host's own connections to
//!   elsewhere are never touched.

pub mod manager;
pub mod rules;
pub mod sys;

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use manager::{PortConfig, PortManager, ReconcileReport};
pub use sys::{DirectRoute, FakePortSys, FakeSysState, PortSys, RealPortSys, Reservation};

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published port. `host_ip: None` means every address of the host (0.0.0.0);
/// `host_port: 0` asks for a random free port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    pub fn tcp(host_port: u16, container_port: u16) -> Self {
        PortMapping {
            host_ip: None,
            host_port,
            container_port,
            protocol: Protocol::Tcp,
        }
    }

    pub fn udp(host_port: u16, container_port: u16) -> Self {
        PortMapping {
            protocol: Protocol::Udp,
            ..Self::tcp(host_port, container_port)
        }
    }

    /// Whether two mappings claim the same host port: same protocol and port, and host IPs
    /// that overlap (equal, or one of them is "all addresses").
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && self.host_port != 0
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// `8080/tcp` or `127.0.0.1:8080/tcp`, as errors name a host port.
    pub fn host_display(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip}:{}/{}", self.host_port, self.protocol),
            None => format!("{}/{}", self.host_port, self.protocol),
        }
    }
}

impl fmt::Display for PortMapping {
    /// Docker's `docker port` form: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}/{}",
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port,
            self.container_port,
            self.protocol
        )
    }
}

/// Errors of the published-ports layer.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A malformed `-p` spec or an invalid request.
    #[error("{0}")]
    Invalid(String),
    /// Another key of ours holds the port.
    #[error("port {port} is already allocated")]
    Allocated { port: String, by: String },
    /// A host process holds the port (our reservation socket could not bind it).
    #[error("port {port} is already in use on the host (bind {addr}: {source})")]
    InUse {
        port: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free host port for {0} in the ephemeral range")]
    NoFreePort(String),
    #[error("firewall: {0}")]
    Firewall(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(spec: &str, why: impl fmt::Display) -> PortError {
    PortError::Invalid(format!("invalid port spec {spec:?}: {why}"))
}

/// `80` or `8000-8002` → (start, end); `allow_zero` for host ports (0 = random).
fn parse_range(spec: &str, s: &str, what: &str, allow_zero: bool) -> Result<(u16, u16), PortError> {
    let num = |t: &str| -> Result<u16, PortError> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(spec, format!("{what} {t:?} is not a port number")));
        }
        let v: u32 = t
            .parse()
            .map_err(|_| invalid(spec, format!("{what} {t:?} is out of range")))?;
        if v > 65535 {
            return Err(invalid(
                spec,
                format!("{what} {v} is out of range (1-65535)"),
            ));
        }
        if v == 0 && !allow_zero {
            return Err(invalid(spec, format!("{what} must not be 0")));
        }
        Ok(v as u16)
    };
    match s.split_once('-') {
        None => {
            let p = num(s)?;
            Ok((p, p))
        }
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a == 0 || b == 0 {
                return Err(invalid(spec, format!("{what} range {s:?} contains port 0")));
            }
            if a > b {
                return Err(invalid(spec, format!("{what} range {s:?} is reversed")));
            }
            Ok((a, b))
        }
    }
}

/// Parses one `-p` value, Docker's syntax: `[IP:][HOST:]CONTAINER[/PROTO]` where HOST and
/// CONTAINER are ports or ranges (`8000-8002:80-82`), HOST may be empty or 0 (random port:
/// `127.0.0.1::80`, `80`), PROTO is `tcp` (default) or `udp`. A range gives one mapping per
/// port.
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, PortError> {
    if spec.is_empty() || spec.trim() != spec {
        return Err(invalid(spec, "empty or surrounded by spaces"));
    }
    let (rest, protocol) = match spec.rsplit_once('/') {
        None => (spec, Protocol::Tcp),
        Some((r, p)) => match p.to_ascii_lowercase().as_str() {
            "tcp" => (r, Protocol::Tcp),
            "udp" => (r, Protocol::Udp),
            "sctp" => return Err(invalid(spec, "sctp is not supported")),
            _ => {
                return Err(invalid(
                    spec,
                    format!("unknown protocol {p:?} (tcp or udp)"),
                ))
            }
        },
    };
    if rest.starts_with('[') || rest.matches(':').count() > 2 {
        return Err(invalid(spec, "IPv6 host addresses are not supported"));
    }
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => (None, "", *c),
        [h, c] => (None, *h, *c),
        [ip, h, c] => (Some(*ip), *h, *c),
        _ => unreachable!("at most two colons"),
    };
    let host_ip = match ip {
        None => None,
        Some("") => return Err(invalid(spec, "empty host IP")),
        Some(s) => {
            let ip: Ipv4Addr = s
                .parse()
                .map_err(|_| invalid(spec, format!("{s:?} is not an IPv4 address")))?;
            if ip.is_unspecified() {
                None
            } else if ip.is_multicast() || ip.is_broadcast() {
                return Err(invalid(spec, format!("{ip} cannot be a host address")));
            } else {
                Some(ip)
            }
        }
    };
    let (c0, c1) = parse_range(spec, container, "container port", false)?;
    let (h0, h1) = if host.is_empty() {
        (0, 0)
    } else {
        parse_range(spec, host, "host port", true)?
    };
    let n = c1 - c0;
    if h0 != 0 && h1 - h0 != n {
        if n == 0 {
            return Err(invalid(
                spec,
                "a host port range with a single container port is not supported",
            ));
        }
        return Err(invalid(
            spec,
            format!(
                "host port range {h0}-{h1} and container port range {c0}-{c1} differ in length"
            ),
        ));
    }
    Ok((0..=n)
        .map(|i| PortMapping {
            host_ip,
            host_port: if h0 == 0 { 0 } else { h0 + i },
            container_port: c0 + i,
            protocol,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ip: Option<[u8; 4]>, h: u16, c: u16, p: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.map(Ipv4Addr::from),
            host_port: h,
            container_port: c,
            protocol: p,
        }
    }
    use Protocol::{Tcp, Udp};

    #[test]
    fn parses_docker_forms() {
        let cases: &[(&str, Vec<PortMapping>)] = &[
            ("80", vec![m(None, 0, 80, Tcp)]),
            ("8080:80", vec![m(None, 8080, 80, Tcp)]),
            ("8080:80/tcp", vec![m(None, 8080, 80, Tcp)]),
            ("53:53/udp", vec![m(None, 53, 53, Udp)]),
            ("53:53/UDP", vec![m(None, 53, 53, Udp)]),
            ("80/udp", vec![m(None, 0, 80, Udp)]),
            ("0:80", vec![m(None, 0, 80, Tcp)]),
            (":80", vec![m(None, 0, 80, Tcp)]),
            (
                "127.0.0.1:8080:80",
                vec![m(Some([127, 0, 0, 1]), 8080, 80, Tcp)],
            ),
            ("127.0.0.1::80", vec![m(Some([127, 0, 0, 1]), 0, 80, Tcp)]),
            ("0.0.0.0:8080:80", vec![m(None, 8080, 80, Tcp)]),
            (
                "8000-8002:80-82",
                vec![
                    m(None, 8000, 80, Tcp),
                    m(None, 8001, 81, Tcp),
                    m(None, 8002, 82, Tcp),
                ],
            ),
            ("80-81/udp", vec![m(None, 0, 80, Udp), m(None, 0, 81, Udp)]),
            (
                "10.0.0.1:9000-9001:90-91/udp",
                vec![
                    m(Some([10, 0, 0, 1]), 9000, 90, Udp),
                    m(Some([10, 0, 0, 1]), 9001, 91, Udp),
                ],
            ),
            ("65535:65535", vec![m(None, 65535, 65535, Tcp)]),
        ];
        for (spec, want) in cases {
            assert_eq!(&parse_publish(spec).unwrap(), want, "{spec}");
        }
    }

    #[test]
    fn rejects_bad_specs() {
        for spec in [
            "",
            " 80",
            "80 ",
            "abc",
            "8080:",
            "8080:0",
            "0",
            "8080:80/sctp",
            "8080:80/http",
            "65536:80",
            "80:65536",
            "-1:80",
            "8000-8002:80-81",
            "8000-8010:80",
            "82-80",
            "8002-8000:82-80",
            "0-2:80-82",
            "1.2.3:80:80",
            "localhost:80:80",
            ":8080:80",
            "[::1]:80:80",
            "::80",
            "1.2.3.4:5:6:7",
            "224.0.0.1:80:80",
            "80/",
            "+80",
        ] {
            let e = parse_publish(spec);
            assert!(e.is_err(), "{spec:?} parsed as {e:?}");
            assert!(
                e.unwrap_err().to_string().contains("invalid port spec"),
                "{spec:?}"
            );
        }
        let e = parse_publish("8080:0").unwrap_err().to_string();
        assert!(e.contains("container port must not be 0"), "{e}");
        let e = parse_publish("8000-8002:80-81").unwrap_err().to_string();
        assert!(e.contains("differ in length"), "{e}");
    }

    #[test]
    fn clashes() {
        let a = m(None, 8080, 80, Tcp);
        assert!(a.clashes_with(&m(Some([127, 0, 0, 1]), 8080, 81, Tcp)));
        assert!(!a.clashes_with(&m(None, 8080, 80, Udp)));
        assert!(!a.clashes_with(&m(None, 8081, 80, Tcp)));
        let b = m(Some([127, 0, 0, 1]), 8080, 80, Tcp);
        assert!(!b.clashes_with(&m(Some([127, 0, 0, 2]), 8080, 80, Tcp)));
        assert!(!m(None, 0, 80, Tcp).clashes_with(&m(None, 0, 80, Tcp)));
        assert_eq!(b.host_display(), "127.0.0.1:8080/tcp");
        assert_eq!(a.to_string(), "0.0.0.0:8080->80/tcp");
    }
}
