//! The agent's embedded DNS server, for service discovery (like Docker's 127.0.0.11).
//!
//! One [`DnsServer`] per agent listens on each bridge network's gateway address (port 53, UDP and
//! TCP) in the host network namespace; containers' resolv.conf names their gateway. Every query
//! is answered according to who asks: the client's source address identifies the container, and
//! only names registered on the networks that container is attached to are visible to it
//! ([`DnsTable`]). Everything else is forwarded to the host's resolvers.
//!
//! - a name in the table: A records (all addresses, rotated round-robin per answer, TTL
//!   [`LOCAL_TTL_SECS`]); AAAA or any other type → NOERROR without answers (not NXDOMAIN);
//! - `d.c.b.a.in-addr.arpa` PTR for an endpoint address on the client's networks → its first name;
//! - anything else → forwarded, as received, to each upstream in turn (UDP, retried over TCP when
//!   truncated; TCP when the client asked over TCP), [`DEFAULT_UPSTREAM_TIMEOUT`] each, SERVFAIL
//!   when all fail, or at once when there are no upstreams. Forwards in flight are bounded
//!   ([`MAX_CONCURRENT_FORWARDS`]; past that, SERVFAIL);
//! - malformed queries get FORMERR when their header is readable, else are dropped; responses
//!   sent to us are never answered.
//!
//! Names are case-insensitive and a trailing dot is ignored (`web.` is `web`).
//!
//! Why not hickory-server: its `Authority` API answers per zone, not per client address, and
//! scoping by the asking container is the core of this server; forwarding per client would need
//! a custom `RequestHandler` anyway. So only `hickory-proto` is used, for the wire format, with a
//! small tokio UDP + TCP loop of our own (a few hundred lines, no resolver cache to go stale).

mod server;
mod table;

pub use server::{DnsServer, DEFAULT_UPSTREAM_TIMEOUT, LOCAL_TTL_SECS, MAX_CONCURRENT_FORWARDS};
pub use table::DnsTable;

use std::net::SocketAddr;

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listener socket could not be bound (address in use, address not on any interface, ...).
    #[error("bind DNS listener on {addr}/{proto}: {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}
