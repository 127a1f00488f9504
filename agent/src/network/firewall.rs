//! nftables rules of the bridge networks, generated as text (pure) and loaded with `nft -f`.
//!
//! Why the `nft` binary and not a netlink crate: the nftables netlink crates are either thin
//! bindings to libnftnl (a C build) or young; `nft -f` of a generated script is atomic (the
//! whole file is one transaction), easy to read in a bug report, and the rules are few. CI needs
//! the Debian package `nftables`.
//!
//! Two tables of our own, replaced as a whole each time (`add` + `delete` + definition in one
//! transaction, so a reload never leaves a window without rules):
//!
//! - `table inet <name>`, chain `forward` (hook forward): isolation. A packet from a shoal bridge
//!   to a *different* shoal bridge is dropped, unless it is a connection to a published port
//!   (DNAT'd by the port layer: Docker lets every network reach published ports through the
//!   host); an internal network's bridge exchanges packets only with itself (nothing in,
//!   nothing out, published ports included). With `br_netfilter` loaded, traffic between two
//!   containers on the same bridge passes this hook with in = out = the bridge: it is accepted.
//! - `table ip <name>-nat`, chain `postrouting`: masquerade what leaves a non-internal network's
//!   subnet through any other interface (Docker's `-s subnet ! -o bridge -j MASQUERADE`).
//!
//! Coexistence with Docker: Docker sets the policy of `ip filter FORWARD` to drop. A drop in any
//! base chain wins over an accept in ours, so on such a host our bridges' traffic (even between
//! two containers of one bridge, when `br_netfilter` is loaded) would die there. Docker's
//! documented hook for other software is its `DOCKER-USER` chain: when it exists we keep one
//! `-i bridge -j ACCEPT` and one `-o bridge -j ACCEPT` rule per shoal bridge in it, tagged with a
//! comment, and remove exactly those when the network goes ([`super::NetOps::sync_docker_user`]).
//! The isolation drops above still apply, since they live in our own chain.

use super::ipam::Ipv4Net;

/// What the rules need to know of one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallNetwork {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub internal: bool,
}

/// The `inet` filter table's name and the `ip` NAT table's name for base name `table`.
pub fn table_names(table: &str) -> (String, String) {
    (table.to_string(), format!("{table}-nat"))
}

fn quoted_set(names: &[&str]) -> String {
    let items: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The full nft script that makes our two tables match `networks`. With no networks it just
/// removes the tables.
pub fn ruleset(table: &str, networks: &[FirewallNetwork]) -> String {
    let (filter, nat) = table_names(table);
    let mut s = String::new();
    // `add table` + `delete table` first: deleting works whether or not the table existed.
    s.push_str(&format!(
        "table inet {filter} {{}}\ndelete table inet {filter}\n"
    ));
    s.push_str(&format!("table ip {nat} {{}}\ndelete table ip {nat}\n"));
    if networks.is_empty() {
        return s;
    }
    s.push_str(&format!("table inet {filter} {{\n"));
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    for n in networks.iter().filter(|n| n.internal) {
        let b = &n.bridge;
        s.push_str(&format!("\t\tiifname \"{b}\" oifname != \"{b}\" drop\n"));
        s.push_str(&format!("\t\toifname \"{b}\" iifname != \"{b}\" drop\n"));
    }
    s.push_str("\t\tct status dnat accept\n");
    for n in networks.iter().filter(|n| !n.internal) {
        let others: Vec<&str> = networks
            .iter()
            .filter(|o| o.bridge != n.bridge)
            .map(|o| o.bridge.as_str())
            .collect();
        if !others.is_empty() {
            s.push_str(&format!(
                "\t\tiifname \"{}\" oifname {} drop\n",
                n.bridge,
                quoted_set(&others)
            ));
        }
    }
    s.push_str("\t}\n}\n");
    s.push_str(&format!("table ip {nat} {{\n"));
    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for n in networks.iter().filter(|n| !n.internal) {
        s.push_str(&format!(
            "\t\tip saddr {} oifname != \"{}\" masquerade\n",
            n.subnet, n.bridge
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(bridge: &str, subnet: &str, internal: bool) -> FirewallNetwork {
        FirewallNetwork {
            bridge: bridge.into(),
            subnet: subnet.parse().unwrap(),
            internal,
        }
    }

    #[test]
    fn empty_ruleset_only_removes_tables() {
        assert_eq!(
            ruleset("shoal", &[]),
            "table inet shoal {}\ndelete table inet shoal\n\
             table ip shoal-nat {}\ndelete table ip shoal-nat\n"
        );
    }

    #[test]
    fn isolation_nat_and_internal() {
        let s = ruleset(
            "shoal",
            &[
                n("sh-aaaa", "172.18.0.0/16", false),
                n("sh-bbbb", "172.19.0.0/16", false),
                n("sh-cccc", "10.9.0.0/24", true),
            ],
        );
        let expected = "table inet shoal {}\ndelete table inet shoal\n\
table ip shoal-nat {}\ndelete table ip shoal-nat\n\
table inet shoal {\n\
\tchain forward {\n\
\t\ttype filter hook forward priority filter; policy accept;\n\
\t\tiifname \"sh-cccc\" oifname != \"sh-cccc\" drop\n\
\t\toifname \"sh-cccc\" iifname != \"sh-cccc\" drop\n\
\t\tct status dnat accept\n\
\t\tiifname \"sh-aaaa\" oifname { \"sh-bbbb\", \"sh-cccc\" } drop\n\
\t\tiifname \"sh-bbbb\" oifname { \"sh-aaaa\", \"sh-cccc\" } drop\n\
\t}\n}\n\
table ip shoal-nat {\n\
\tchain postrouting {\n\
\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
\t\tip saddr 172.18.0.0/16 oifname != \"sh-aaaa\" masquerade\n\
\t\tip saddr 172.19.0.0/16 oifname != \"sh-bbbb\" masquerade\n\
\t}\n}\n";
        assert_eq!(s, expected);
    }

    #[test]
    fn single_network_has_no_empty_set() {
        let s = ruleset("t", &[n("t-1", "10.0.0.0/24", false)]);
        assert!(!s.contains("{ }"), "{s}");
        assert!(s.contains("ip saddr 10.0.0.0/24 oifname != \"t-1\" masquerade"));
        assert!(s.contains("table ip t-nat {\n"));
    }
}
