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
}

/// The priority of the nat output chain: `dstnat` (-100); nft 1.0.6 only accepts the name on
/// prerouting, so it is spelt as a number.
pub const OUTPUT_PRIORITY: i32 = -100;

/// The full nft script that makes `table ip <table>` match `entries`. `routes` are the directly
/// connected routes of the backends (their bridges get the 127/8 guard, their subnets the
/// hairpin masquerade). With no entries it only removes the table.
pub fn ruleset(table: &str, entries: &[RuleEntry<'_>], routes: &[DirectRoute]) -> String {
    let mut s = String::new();
    // `add table` + `delete table` first: deleting works whether or not the table existed.
    let _ = writeln!(s, "table ip {table} {{}}\ndelete table ip {table}");
    if entries.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table ip {table} {{");
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
    let _ = writeln!(
        s,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tfib daddr type local jump published\n\t}}"
    );
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

/// The DNAT rule of one entry; `None` without backends (the port stays reserved and refuses).
pub fn dnat_rule(e: &RuleEntry<'_>) -> Option<String> {
    let m = &e.mapping;
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
    let daddr = m
        .host_ip
        .map(|ip| format!("ip daddr {ip} "))
        .unwrap_or_default();
    Some(format!(
        "{daddr}{proto} dport {port} dnat to {target} comment \"{key}\"",
        proto = m.protocol,
        port = m.host_port,
        key = e.key
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
            ruleset("shoal-ports", &[], &[]),
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
            },
            RuleEntry {
                key: "dns",
                mapping: PortMapping {
                    host_ip: Some(Ipv4Addr::LOCALHOST),
                    ..PortMapping::udp(5353, 53)
                },
                backends: &one,
            },
            RuleEntry {
                key: "idle",
                mapping: PortMapping::tcp(9000, 90),
                backends: &[],
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
        assert_eq!(ruleset("p", &entries, &routes), expected);
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
            }],
            &[],
        );
        assert!(!s.contains("guard") && !s.contains("127.0.0.0/8"), "{s}");
        assert!(!s.contains("{ }"), "{s}");
        assert!(s.contains("udp dport 1 dnat to 10.1.0.2:2 comment \"k\""));
    }
}
