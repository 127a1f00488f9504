//! The nftables table of the published ports, generated as text (pure). See the module docs of
//! [`super`] for what each chain does and why.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::sys::DirectRoute;
use super::PortMapping;

/// One published port of one key, with its current backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleEntry<'a> {
    pub key: &'a str,
    /// A resolved mapping (host port ≠ 0).
    pub mapping: PortMapping,
    pub backends: &'a [Ipv4Addr],
    /// The ingress routing mesh: other nodes with serving tasks of the key, as (node underlay
    /// address, slots = its serving tasks); reached at the same host port. Empty for a port
    /// that only serves local tasks (then the rule is exactly the single-node one).
    pub remotes: &'a [(Ipv4Addr, u32)],
}

/// The priority of the nat output chain: `dstnat` (-100); nft 1.0.6 only accepts the name on
/// prerouting, so it is spelt as a number.
pub const OUTPUT_PRIORITY: i32 = -100;

/// The full nft script that makes `table ip <table>` match `entries`. `routes` are the directly
/// connected routes of the backends (their bridges get the 127/8 guard, their subnets the
/// hairpin masquerade). `peers` are the underlay addresses of every cluster node: connections
/// from them were already forwarded once and only go to local backends; connections this node
/// forwards to them are masqueraded (only used when some entry has remotes). With no entries it
/// only removes the table.
pub fn ruleset(
    table: &str,
    entries: &[RuleEntry<'_>],
    routes: &[DirectRoute],
    peers: &[Ipv4Addr],
) -> String {
    let mut s = String::new();
    // `add table` + `delete table` first: deleting works whether or not the table existed.
    let _ = writeln!(s, "table ip {table} {{}}\ndelete table ip {table}");
    if entries.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table ip {table} {{");
    let peers: BTreeSet<Ipv4Addr> = if entries.iter().any(|e| !e.remotes.is_empty()) {
        peers.iter().copied().collect()
    } else {
        BTreeSet::new()
    };
    if !peers.is_empty() {
        let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            s,
            "\tset peers {{\n\t\ttype ipv4_addr\n\t\telements = {{ {} }}\n\t}}",
            list.join(", ")
        );
    }
    let ifaces: BTreeSet<&str> = routes.iter().map(|r| r.iface.as_str()).collect();
    if !ifaces.is_empty() {
        let set: Vec<String> = ifaces.iter().map(|i| format!("\"{i}\"")).collect();
        let _ = writeln!(
            s,
            "\tchain guard {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n\
             \t\tiifname {{ {} }} ip daddr 127.0.0.0/8 drop\n\t}}",
            set.join(", ")
        );
    }
    // Connections forwarded by a peer node arrive on prerouting only (a process of this host
    // connecting from its own address goes through output and is a client like any other).
    let from_peers = if peers.is_empty() {
        ""
    } else {
        "\t\tip saddr @peers fib daddr type local jump from_peers\n"
    };
    let _ = writeln!(
        s,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {from_peers}\t\tfib daddr type local jump published\n\t}}"
    );
    if !peers.is_empty() {
        let _ = writeln!(s, "\tchain from_peers {{");
        for e in entries.iter().filter(|e| !e.remotes.is_empty()) {
            let _ = writeln!(s, "\t\t{}", peer_rule(e));
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(
        s,
        "\tchain output {{\n\t\ttype nat hook output priority {OUTPUT_PRIORITY}; policy accept;\n\
         \t\tfib daddr type local jump published\n\t}}"
    );
    let _ = writeln!(s, "\tchain published {{");
    for e in entries {
        if let Some(rule) = dnat_rule(e) {
            let _ = writeln!(s, "\t\t{rule}");
        }
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    if !ifaces.is_empty() {
        let set: Vec<String> = ifaces.iter().map(|i| format!("\"{i}\"")).collect();
        let _ = writeln!(
            s,
            "\t\tct status dnat ip saddr 127.0.0.0/8 oifname {{ {} }} masquerade",
            set.join(", ")
        );
    }
    if !peers.is_empty() {
        let _ = writeln!(s, "\t\tct status dnat ip daddr @peers masquerade");
    }
    let subnets: BTreeSet<String> = routes.iter().map(|r| r.subnet.to_string()).collect();
    for net in subnets {
        let _ = writeln!(
            s,
            "\t\tct status dnat ip saddr {net} ip daddr {net} masquerade"
        );
    }
    let _ = writeln!(s, "\t}}\n}}");
    s
}

fn match_prefix(m: &PortMapping) -> String {
    let daddr = m
        .host_ip
        .map(|ip| format!("ip daddr {ip} "))
        .unwrap_or_default();
    format!("{daddr}{} dport {}", m.protocol, m.host_port)
}

/// The rule (in chain `from_peers`) for connections a peer node forwarded: local backends only (never forwarded again,
/// so no loops); with none, `accept` leaves them un-NATed and the reservation socket refuses.
pub fn peer_rule(e: &RuleEntry<'_>) -> String {
    let local = RuleEntry {
        remotes: &[],
        ..e.clone()
    };
    match dnat_rule(&local) {
        Some(rule) => rule,
        None => format!("{} accept comment \"{}\"", match_prefix(&e.mapping), e.key),
    }
}

/// The DNAT rule of one entry; `None` without backends (the port stays reserved and refuses).
/// With remotes: one `numgen` map of `address . port` over the local backends (container port)
/// and the remote nodes (same host port, one slot per serving task).
pub fn dnat_rule(e: &RuleEntry<'_>) -> Option<String> {
    let m = &e.mapping;
    if !e.remotes.is_empty() {
        let slots: Vec<String> =
            e.backends
                .iter()
                .map(|b| format!("{b} . {}", m.container_port))
                .chain(e.remotes.iter().flat_map(|(addr, n)| {
                    (0..*n).map(move |_| format!("{addr} . {}", m.host_port))
                }))
                .enumerate()
                .map(|(i, t)| format!("{i} : {t}"))
                .collect();
        if slots.is_empty() {
            return None;
        }
        return Some(format!(
            "{} dnat ip addr . port to numgen inc mod {} map {{ {} }} comment \"{}\"",
            match_prefix(m),
            slots.len(),
            slots.join(", "),
            e.key
        ));
    }
    let target = match e.backends {
        [] => return None,
        [one] => format!("{one}:{}", m.container_port),
        many => {
            let items: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {b}"))
                .collect();
            format!(
                "numgen inc mod {} map {{ {} }} : {}",
                many.len(),
                items.join(", "),
                m.container_port
            )
        }
    };
    Some(format!(
        "{} dnat to {target} comment \"{}\"",
        match_prefix(m),
        e.key
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Protocol;

    fn route(iface: &str, net: &str) -> DirectRoute {
        DirectRoute {
            iface: iface.into(),
            subnet: net.parse().unwrap(),
        }
    }

    #[test]
    fn empty_only_removes_the_table() {
        assert_eq!(
            ruleset("shoal-ports", &[], &[], &[]),
            "table ip shoal-ports {}\ndelete table ip shoal-ports\n"
        );
    }

    #[test]
    fn full_table() {
        let one = [Ipv4Addr::new(10, 1, 0, 2)];
        let two = [Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 2, 0, 3)];
        let entries = [
            RuleEntry {
                key: "web",
                mapping: PortMapping::tcp(8080, 80),
                backends: &two,
                remotes: &[],
            },
            RuleEntry {
                key: "dns",
                mapping: PortMapping {
                    host_ip: Some(Ipv4Addr::LOCALHOST),
                    ..PortMapping::udp(5353, 53)
                },
                backends: &one,
                remotes: &[],
            },
            RuleEntry {
                key: "idle",
                mapping: PortMapping::tcp(9000, 90),
                backends: &[],
                remotes: &[],
            },
        ];
        let routes = [
            route("sh-b", "10.2.0.0/24"),
            route("sh-a", "10.1.0.0/24"),
            route("sh-a", "10.1.0.0/24"),
        ];
        let expected = "table ip p {}\ndelete table ip p\n\
table ip p {\n\
\tchain guard {\n\
\t\ttype filter hook prerouting priority raw; policy accept;\n\
\t\tiifname { \"sh-a\", \"sh-b\" } ip daddr 127.0.0.0/8 drop\n\
\t}\n\
\tchain prerouting {\n\
\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
\t\tfib daddr type local jump published\n\
\t}\n\
\tchain output {\n\
\t\ttype nat hook output priority -100; policy accept;\n\
\t\tfib daddr type local jump published\n\
\t}\n\
\tchain published {\n\
\t\ttcp dport 8080 dnat to numgen inc mod 2 map { 0 : 10.1.0.2, 1 : 10.2.0.3 } : 80 comment \"web\"\n\
\t\tip daddr 127.0.0.1 udp dport 5353 dnat to 10.1.0.2:53 comment \"dns\"\n\
\t}\n\
\tchain postrouting {\n\
\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
\t\tct status dnat ip saddr 127.0.0.0/8 oifname { \"sh-a\", \"sh-b\" } masquerade\n\
\t\tct status dnat ip saddr 10.1.0.0/24 ip daddr 10.1.0.0/24 masquerade\n\
\t\tct status dnat ip saddr 10.2.0.0/24 ip daddr 10.2.0.0/24 masquerade\n\
\t}\n\
}\n";
        assert_eq!(
            ruleset("p", &entries, &routes, &[Ipv4Addr::new(192, 168, 1, 1)]),
            expected
        );
    }

    #[test]
    fn no_routes_no_guard_chain() {
        let b = [Ipv4Addr::new(10, 1, 0, 2)];
        let s = ruleset(
            "p",
            &[RuleEntry {
                key: "k",
                mapping: PortMapping {
                    protocol: Protocol::Udp,
                    ..PortMapping::tcp(1, 2)
                },
                backends: &b,
                remotes: &[],
            }],
            &[],
            &[],
        );
        assert!(!s.contains("guard") && !s.contains("127.0.0.0/8"), "{s}");
        assert!(!s.contains("{ }"), "{s}");
        assert!(s.contains("udp dport 1 dnat to 10.1.0.2:2 comment \"k\""));
    }
}

#[cfg(test)]
mod mesh_tests {
    use super::*;

    #[test]
    fn mesh_rules_local_and_remote_slots() {
        let local = [Ipv4Addr::new(10, 1, 0, 2)];
        let remotes = [
            (Ipv4Addr::new(192, 168, 1, 3), 2),
            (Ipv4Addr::new(192, 168, 1, 4), 1),
        ];
        let peers = [
            Ipv4Addr::new(192, 168, 1, 4),
            Ipv4Addr::new(192, 168, 1, 2),
            Ipv4Addr::new(192, 168, 1, 3),
        ];
        let entries = [
            RuleEntry {
                key: "svc1",
                mapping: PortMapping::tcp(8080, 80),
                backends: &local,
                remotes: &remotes,
            },
            RuleEntry {
                key: "svc2",
                mapping: PortMapping::tcp(9090, 90),
                backends: &[],
                remotes: &remotes[1..],
            },
        ];
        let s = ruleset("p", &entries, &[], &peers);
        let want = [
            "\tset peers {\n\t\ttype ipv4_addr\n\t\telements = { 192.168.1.2, 192.168.1.3, 192.168.1.4 }\n\t}\n",
            "\t\tip saddr @peers fib daddr type local jump from_peers\n\t\tfib daddr type local jump published\n",
            "\tchain from_peers {\n\t\ttcp dport 8080 dnat to 10.1.0.2:80 comment \"svc1\"\n\
             \t\ttcp dport 9090 accept comment \"svc2\"\n\t}\n",
            "\t\ttcp dport 8080 dnat ip addr . port to numgen inc mod 4 map { 0 : 10.1.0.2 . 80, 1 : 192.168.1.3 . 8080, 2 : 192.168.1.3 . 8080, 3 : 192.168.1.4 . 8080 } comment \"svc1\"\n",
            "\t\ttcp dport 9090 dnat ip addr . port to numgen inc mod 1 map { 0 : 192.168.1.4 . 9090 } comment \"svc2\"\n",
            "\t\tct status dnat ip daddr @peers masquerade\n",
        ];
        for w in want {
            assert!(s.contains(w), "missing {w:?} in\n{s}");
        }
    }

    #[test]
    fn no_remotes_no_mesh() {
        let b = [Ipv4Addr::new(10, 1, 0, 2)];
        let e = [RuleEntry {
            key: "k",
            mapping: PortMapping::tcp(1, 2),
            backends: &b,
            remotes: &[],
        }];
        let with = ruleset("p", &e, &[], &[Ipv4Addr::new(192, 168, 1, 2)]);
        assert_eq!(with, ruleset("p", &e, &[], &[]));
        assert!(!with.contains("peers"), "{with}");
    }
}
