//! When a draining task may stop before its drain period is over.
//!
//! A task leaving rotation waits its drain period so that requests in flight finish and
//! clients holding its address in a DNS cache do not find it gone. Most of the time neither is
//! the case long before the period ends: the period is an upper bound, as a load balancer's
//! deregistration delay is. The drain ends early once, for [`QUIET_FOR`] in a row:
//!
//! - no inbound TCP connection is open in the task's network namespace (a socket on a port the
//!   task listens on, in a state where the request may still be served or answered), and
//! - the task has no bound UDP socket (a datagram service: nothing tells us it is idle), and
//! - no DNS answer naming the task's addresses can still be cached by a client,
//!
//! and never before [`MIN_DRAIN`] has passed since the task left, which covers other nodes
//! that learn of the change a little later and connections already on their way.
//!
//! The socket tables are read only when the namespace's socket counters show more than the
//! listeners seen last time: a table read walks the whole host's connection hash, and a
//! rollout polls many draining tasks at once (reading them every poll cost more CPU than
//! starting the new tasks).

use std::collections::HashSet;
use std::time::Duration;

/// The drain never ends before this, whatever the sockets say.
pub const MIN_DRAIN: Duration = Duration::from_millis(250);
/// How long the task must look idle, checked every [`POLL`].
pub const QUIET_FOR: Duration = Duration::from_millis(100);
/// How often the sockets are looked at.
pub const POLL: Duration = Duration::from_millis(50);

/// TCP states (as `/proc/net/tcp` prints them) in which an accepted connection may still carry
/// a request: SYN_RECV, ESTABLISHED (also the ones waiting in the accept queue) and
/// CLOSE_WAIT (the client is done sending; the answer may not be written yet).
const SERVING_STATES: [&str; 3] = ["03", "01", "08"];
const LISTEN: &str = "0A";
/// UDP "state" 07 is an unconnected (bound, receiving) socket.
const UDP_UNCONNECTED: &str = "07";

/// `(local port, state)` of each socket in a `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` table.
fn sockets(table: &str) -> impl Iterator<Item = (u16, &str)> {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        Some((port, state))
    })
}

/// The ports with a TCP listener in the tables.
fn listening_ports(tcp: &[&str]) -> HashSet<u16> {
    tcp.iter()
        .flat_map(|t| sockets(t))
        .filter(|(_, st)| st.eq_ignore_ascii_case(LISTEN))
        .map(|(port, _)| port)
        .collect()
}

/// A socket table of `pid`'s namespace and its IPv6 twin (`tcp` and `tcp6`), if there is one.
/// `None` when the first cannot be read.
fn tables(pid: i32, name: &str) -> Option<Vec<String>> {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).ok();
    let first = read(name)?;
    Some(
        std::iter::once(first)
            .chain(read(&format!("{name}6")))
            .collect(),
    )
}

/// Whether the namespace whose socket tables are given still serves someone: an inbound TCP
/// connection in a serving state, or any bound UDP socket.
pub fn serving(tcp: &[&str], udp: &[&str]) -> bool {
    let listening = listening_ports(tcp);
    let inbound = tcp.iter().flat_map(|t| sockets(t)).any(|(port, st)| {
        listening.contains(&port) && SERVING_STATES.iter().any(|s| st.eq_ignore_ascii_case(s))
    });
    inbound
        || udp
            .iter()
            .flat_map(|t| sockets(t))
            .any(|(_, st)| st == UDP_UNCONNECTED)
}

/// Socket counts of one network namespace, from `/proc/<pid>/net/sockstat` and `sockstat6`:
/// the kernel keeps them per namespace, so reading them costs nothing, while reading the
/// socket tables walks the whole host's connection hash (milliseconds each, and a rollout
/// polls many draining tasks at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// TCP sockets in use (IPv4 and IPv6): listeners and connections, not SYN_RECV or TIME_WAIT.
    pub tcp: u64,
    /// UDP sockets in use (IPv4 and IPv6).
    pub udp: u64,
}

/// Reads [`Counts`] out of `sockstat` and `sockstat6` texts.
pub fn counts(sockstat: &str, sockstat6: &str) -> Option<Counts> {
    let inuse = |text: &str, proto: &str| -> Option<u64> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(proto))?;
        let mut fields = line.split_whitespace();
        fields.find(|f| *f == "inuse")?;
        fields.next()?.parse().ok()
    };
    Some(Counts {
        tcp: inuse(sockstat, "TCP:")? + inuse(sockstat6, "TCP6:").unwrap_or(0),
        udp: inuse(sockstat, "UDP:")? + inuse(sockstat6, "UDP6:").unwrap_or(0),
    })
}

/// What the socket tables said when last read: the TCP listeners they held.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastRead {
    listeners: Option<u64>,
}

impl LastRead {
    /// Whether the counts alone show the namespace idle: no UDP socket, and no TCP socket but
    /// the listeners the tables held when last read. Anything else needs the tables.
    pub fn idle_by_counts(&self, counts: Counts) -> bool {
        counts.udp == 0 && self.listeners == Some(counts.tcp)
    }
}

/// Number of TCP listeners in the tables.
fn listeners(tcp: &[&str]) -> u64 {
    tcp.iter()
        .flat_map(|t| sockets(t))
        .filter(|(_, st)| st.eq_ignore_ascii_case(LISTEN))
        .count() as u64
}

/// Whether `pid`'s network namespace still serves someone (see [`serving`]). The cheap
/// counters answer when they can ([`LastRead::idle_by_counts`]); otherwise the socket tables
/// are read and `last` remembers their listeners. `None` when the tables cannot be read (the
/// process is gone, or the namespace has no IPv6): the caller then waits the full period.
pub fn serving_in(pid: i32, last: &mut LastRead) -> Option<bool> {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).ok();
    let counted = read("sockstat").and_then(|s| counts(&s, &read("sockstat6").unwrap_or_default()));
    if counted.is_some_and(|c| last.idle_by_counts(c)) {
        return Some(false);
    }
    let (tcp, udp) = (tables(pid, "tcp")?, tables(pid, "udp")?);
    let tcp: Vec<&str> = tcp.iter().map(String::as_str).collect();
    let udp: Vec<&str> = udp.iter().map(String::as_str).collect();
    last.listeners = Some(listeners(&tcp));
    Some(serving(&tcp, &udp))
}

/// Whether every one of `ports` has a TCP listener in the tables.
pub fn listens_on(tcp: &[&str], ports: &[u16]) -> bool {
    let listening = listening_ports(tcp);
    ports.iter().all(|p| listening.contains(p))
}

/// Whether `pid`'s network namespace has a TCP listener on every one of `ports`; `None` when
/// its tables cannot be read.
pub fn listening_in(pid: i32, ports: &[u16]) -> Option<bool> {
    let tcp = tables(pid, "tcp")?;
    let tcp: Vec<&str> = tcp.iter().map(String::as_str).collect();
    Some(listens_on(&tcp, ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn table(rows: &[(&str, &str, &str)]) -> String {
        let mut t = HEADER.to_string();
        for (i, (local, remote, st)) in rows.iter().enumerate() {
            t.push_str(&format!(
                "   {i}: {local} {remote} {st} 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0\n"
            ));
        }
        t
    }

    #[test]
    fn a_listener_alone_is_idle() {
        let tcp = table(&[("00000000:0050", "00000000:0000", "0A")]);
        assert!(!serving(&[&tcp], &[HEADER]));
    }

    #[test]
    fn an_accepted_connection_is_serving_until_it_closes() {
        for st in ["01", "03", "08"] {
            let tcp = table(&[
                ("00000000:0050", "00000000:0000", "0A"),
                ("0200000A:0050", "0100000A:D431", st),
            ]);
            assert!(serving(&[&tcp], &[HEADER]), "state {st}");
        }
        for st in ["06", "04", "05", "09"] {
            let tcp = table(&[
                ("00000000:0050", "00000000:0000", "0A"),
                ("0200000A:0050", "0100000A:D431", st),
            ]);
            assert!(!serving(&[&tcp], &[HEADER]), "state {st}");
        }
    }

    #[test]
    fn outbound_connections_do_not_hold_the_drain() {
        // The task talks to a database on 5432; it listens on 80.
        let tcp = table(&[
            ("00000000:0050", "00000000:0000", "0A"),
            ("0200000A:9C40", "0300000A:1538", "01"),
        ]);
        assert!(!serving(&[&tcp], &[HEADER]));
    }

    #[test]
    fn ipv6_connections_count() {
        let tcp6 = table(&[
            (
                "00000000000000000000000000000000:1F90",
                "00000000000000000000000000000000:0000",
                "0A",
            ),
            (
                "0000000000000000FFFF00000200000A:1F90",
                "0000000000000000FFFF00000100000A:C350",
                "01",
            ),
        ]);
        assert!(serving(&[HEADER, &tcp6], &[HEADER]));
    }

    #[test]
    fn a_bound_udp_socket_keeps_the_full_drain() {
        let udp = table(&[("00000000:0035", "00000000:0000", "07")]);
        assert!(serving(&[HEADER], &[&udp]));
        let connected = table(&[("0200000A:C000", "0300000A:0035", "01")]);
        assert!(!serving(&[HEADER], &[&connected]));
    }

    const SOCKSTAT: &str = "sockets: used 3\nTCP: inuse 2 orphan 0 tw 5 alloc 9 mem 26\nUDP: inuse 1 mem 0\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";
    const SOCKSTAT6: &str =
        "TCP6: inuse 1\nUDP6: inuse 0\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n";

    #[test]
    fn counts_add_both_families() {
        assert_eq!(counts(SOCKSTAT, SOCKSTAT6), Some(Counts { tcp: 3, udp: 1 }));
        assert_eq!(counts(SOCKSTAT, ""), Some(Counts { tcp: 2, udp: 1 }));
        assert_eq!(counts("nonsense", SOCKSTAT6), None);
    }

    #[test]
    fn counts_tell_idle_only_when_nothing_but_the_listeners_is_there() {
        let tcp = table(&[
            ("00000000:0050", "00000000:0000", "0A"),
            ("00000000:1F90", "00000000:0000", "0A"),
        ]);
        let last = LastRead {
            listeners: Some(listeners(&[&tcp])),
        };
        assert!(last.idle_by_counts(Counts { tcp: 2, udp: 0 }));
        // A connection more (inbound or not), or any UDP socket: the tables must say.
        assert!(!last.idle_by_counts(Counts { tcp: 3, udp: 0 }));
        assert!(!last.idle_by_counts(Counts { tcp: 2, udp: 1 }));
        // Before the tables were ever read, the counts prove nothing.
        assert!(!LastRead::default().idle_by_counts(Counts { tcp: 0, udp: 0 }));
    }

    #[test]
    fn a_port_counts_as_listened_on_in_either_family() {
        let tcp = table(&[("00000000:0050", "00000000:0000", "0A")]);
        let tcp6 = table(&[(
            "00000000000000000000000000000000:1F90",
            "00000000000000000000000000000000:0000",
            "0A",
        )]);
        assert!(listens_on(&[&tcp, &tcp6], &[80, 8080]));
        assert!(!listens_on(&[&tcp], &[80, 8080]));
        // A connection on the port is not a listener.
        let connected = table(&[("0200000A:0050", "0100000A:D431", "01")]);
        assert!(!listens_on(&[&connected], &[80]));
    }

    #[test]
    fn garbage_lines_are_ignored() {
        let tcp = format!("{HEADER}nonsense\n   1: zz:zz 00:00 01\n");
        assert!(!serving(&[&tcp], &[HEADER]));
    }
}
