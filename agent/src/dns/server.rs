//! The UDP + TCP listener loops, the query handler and the upstream forwarder.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use super::table::DnsTable;
use super::DnsError;

/// TTL of the answers from the table: short, so that scaling a service shows quickly.
pub const LOCAL_TTL_SECS: u32 = 2;
/// Time allowed to each upstream, per query and transport.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many queries are being forwarded at once (per server); past that, SERVFAIL.
pub const MAX_CONCURRENT_FORWARDS: usize = 256;
/// At most this many TCP clients at once (per listener); past that, new connections are closed.
const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP client idle for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The UDP payload size we advertise in EDNS answers.
const OUR_EDNS_PAYLOAD: u16 = 4096;
/// Classic DNS-over-UDP limit when the client sends no EDNS.
const PLAIN_UDP_LIMIT: usize = 512;

/// The embedded DNS server. Cheap to clone: clones share listeners and table.
#[derive(Clone)]
pub struct DnsServer {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Keyed by the actually bound address; holds the address asked for too. Dropping the last
    /// `DnsServer` clone drops these, which stops every loop (the loops only hold `Shared`).
    listeners: Mutex<HashMap<SocketAddr, Listener>>,
    /// Serialises `listen`/`unlisten`, so that two tasks starting at once on a new network
    /// bind its address once.
    binding: tokio::sync::Mutex<()>,
}

/// What the listener loops need.
struct Shared {
    table: DnsTable,
    upstreams: Vec<SocketAddr>,
    upstream_timeout: Duration,
    forwards: Arc<Semaphore>,
    /// The addresses we listen on: never forwarded to, which would loop.
    own: Mutex<HashSet<SocketAddr>>,
}

struct Listener {
    requested: SocketAddr,
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with one query.
enum Action {
    Reply(Vec<u8>),
    Forward,
    Drop,
}

impl DnsServer {
    pub fn new(table: DnsTable, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    table,
                    upstreams,
                    upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
                    forwards: Arc::new(Semaphore::new(MAX_CONCURRENT_FORWARDS)),
                    own: Mutex::new(HashSet::new()),
                }),
                listeners: Mutex::new(HashMap::new()),
                binding: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Same server with another per-upstream timeout (tests use a short one). Call before
    /// `listen`: it builds a new server, sharing only the table.
    pub fn with_upstream_timeout(self, timeout: Duration) -> Self {
        let s = &self.inner.shared;
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    table: s.table.clone(),
                    upstreams: s.upstreams.clone(),
                    upstream_timeout: timeout,
                    forwards: Arc::new(Semaphore::new(MAX_CONCURRENT_FORWARDS)),
                    own: Mutex::new(HashSet::new()),
                }),
                listeners: Mutex::new(HashMap::new()),
                binding: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn table(&self) -> &DnsTable {
        &self.inner.shared.table
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.inner.shared.upstreams
    }

    /// Parses the `nameserver` lines of a resolv.conf text (e.g. the host's /etc/resolv.conf)
    /// into port-53 socket addresses, in order, without duplicates. Comments (`#`, `;`) and
    /// unparsable addresses are skipped; an IPv6 zone (`fe80::1%eth0`) is dropped with its
    /// address, since it can't be expressed without the interface index.
    pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                continue;
            }
            let Some(addr) = words.next() else { continue };
            let Ok(ip) = addr.parse::<IpAddr>() else {
                continue;
            };
            let sa = SocketAddr::new(ip, 53);
            if !out.contains(&sa) {
                out.push(sa);
            }
        }
        out
    }

    /// Starts answering on `addr`, over UDP and TCP (same port). With port 0 a free port is
    /// chosen (the same for both). Returns the bound address. Listening again on an address
    /// already listened on is a no-op returning that address.
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, DnsError> {
        let _binding = self.inner.binding.lock().await;
        if let Some(bound) = self.find_listener(addr) {
            return Ok(bound);
        }
        let (udp, tcp) = bind_pair(addr).await?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind {
            addr,
            proto: "udp",
            source,
        })?;
        let udp = Arc::new(udp);
        let udp_task = tokio::spawn(udp_loop(self.inner.shared.clone(), udp));
        let tcp_task = tokio::spawn(tcp_loop(self.inner.shared.clone(), tcp));
        let listener = Listener {
            requested: addr,
            udp: udp_task,
            tcp: tcp_task,
        };
        let mut listeners = self.lock_listeners();
        if let Some(old) = listeners.insert(bound, listener) {
            // Can't normally happen (the bind would have failed); the old loops stop on drop.
            drop(old);
        }
        self.lock_own().insert(bound);
        debug!(%bound, "DNS listener started");
        Ok(bound)
    }

    /// Stops answering on `addr` (the address given to `listen` or the one it returned): the
    /// loops, their TCP connections and their in-flight forwards are all cancelled. Unknown
    /// addresses are ignored.
    pub async fn unlisten(&self, addr: SocketAddr) {
        let _binding = self.inner.binding.lock().await;
        let removed = {
            let mut listeners = self.lock_listeners();
            let key = listeners
                .iter()
                .find(|(bound, l)| **bound == addr || l.requested == addr)
                .map(|(bound, _)| *bound);
            key.and_then(|k| listeners.remove(&k).map(|l| (k, l)))
        };
        if let Some((bound, mut l)) = removed {
            self.lock_own().remove(&bound);
            l.udp.abort();
            l.tcp.abort();
            // Wait for the loops to be gone, so the port is free (or nearly: cancelled forward
            // tasks drop their socket handle when the runtime next polls them) when we return.
            let _ = (&mut l.udp).await;
            let _ = (&mut l.tcp).await;
            debug!(%addr, "DNS listener stopped");
        }
    }

    /// The addresses currently listened on (as bound).
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.lock_listeners().keys().copied().collect()
    }

    fn find_listener(&self, addr: SocketAddr) -> Option<SocketAddr> {
        self.lock_listeners()
            .iter()
            .find(|(bound, l)| **bound == addr || (addr.port() != 0 && l.requested == addr))
            .map(|(bound, _)| *bound)
    }

    fn lock_own(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.inner
            .shared
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Listener>> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Binds UDP and TCP on the same address. For port 0 the TCP socket takes the port UDP got,
/// retrying a few times if that port happens to be taken for TCP.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let attempts = if addr.port() == 0 { 8 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?;
        let port = udp
            .local_addr()
            .map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?
            .port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last_err = Some(DnsError::Bind {
                    addr: tcp_addr,
                    proto: "tcp",
                    source,
                })
            }
        }
    }
    Err(last_err.expect("at least one attempt"))
}

async fn udp_loop(inner: Arc<Shared>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65535];
    // Dropping the set (when this loop is aborted) aborts the forwards in flight.
    let mut forwards = JoinSet::new();
    loop {
        while forwards.try_join_next().is_some() {}
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on Linux for unconnected sockets in some cases; they
                // concern one peer only, so keep serving.
                debug!(error = %e, "DNS UDP receive error");
                continue;
            }
        };
        let packet = &buf[..n];
        let (action, query) = handle_query(&inner, peer, packet, Transport::Udp);
        match action {
            Action::Reply(bytes) => {
                let _ = sock.send_to(&bytes, peer).await;
            }
            Action::Drop => {}
            Action::Forward => {
                let Some(query) = query else { continue };
                let Ok(permit) = inner.forwards.clone().try_acquire_owned() else {
                    warn!(%peer, "too many DNS queries being forwarded: SERVFAIL");
                    if let Some(b) = error_reply(&query, ResponseCode::ServFail) {
                        let _ = sock.send_to(&b, peer).await;
                    }
                    continue;
                };
                let raw = packet.to_vec();
                let inner = inner.clone();
                let sock = sock.clone();
                forwards.spawn(async move {
                    let reply = forward(&inner, &query, &raw, Transport::Udp).await;
                    drop(permit);
                    if let Some(b) = reply {
                        let _ = sock.send_to(&b, peer).await;
                    }
                });
            }
        }
    }
}

async fn tcp_loop(inner: Arc<Shared>, listener: TcpListener) {
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Dropping the set (when this loop is aborted) aborts every connection task.
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "DNS TCP accept error");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            debug!(%peer, "too many DNS TCP connections: closing");
            continue;
        };
        let inner = inner.clone();
        tasks.spawn(async move {
            serve_tcp(&inner, stream, peer).await;
            drop(permit);
        });
    }
}

async fn serve_tcp(inner: &Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let msg = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read_framed(&mut stream)).await {
            Ok(Ok(Some(m))) => m,
            _ => return,
        };
        let (action, query) = handle_query(inner, peer, &msg, Transport::Tcp);
        let reply = match action {
            Action::Reply(b) => Some(b),
            Action::Drop => None,
            Action::Forward => match query {
                None => None,
                Some(query) => match inner.forwards.clone().try_acquire_owned() {
                    Ok(_permit) => forward(inner, &query, &msg, Transport::Tcp).await,
                    Err(_) => error_reply(&query, ResponseCode::ServFail),
                },
            },
        };
        match reply {
            Some(b) => {
                if write_framed(&mut stream, &b).await.is_err() {
                    return;
                }
            }
            // A query we won't answer (e.g. a response sent to us): hang up.
            None => return,
        }
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "DNS message too long")
    })?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

/// The client's IPv4 address (IPv4-mapped IPv6 included), if any.
fn client_v4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// Largest UDP answer the client accepts.
fn udp_limit(query: &Message) -> usize {
    query
        .edns
        .as_ref()
        .map(|e| usize::from(e.max_payload()).max(PLAIN_UDP_LIMIT))
        .unwrap_or(PLAIN_UDP_LIMIT)
}

/// Decides what to do with one raw query. Returns the parsed query too when it parsed.
fn handle_query(
    inner: &Shared,
    peer: SocketAddr,
    packet: &[u8],
    transport: Transport,
) -> (Action, Option<Message>) {
    let query = match Message::from_vec(packet) {
        Ok(q) => q,
        Err(e) => {
            debug!(%peer, error = %e, "malformed DNS query");
            return (formerr_from_raw(packet), None);
        }
    };
    if query.metadata.message_type != MessageType::Query {
        // Never answer responses: that is how reflection loops start.
        return (Action::Drop, Some(query));
    }
    if query.metadata.op_code != OpCode::Query {
        let a = error_reply(&query, ResponseCode::NotImp).map_or(Action::Drop, Action::Reply);
        return (a, Some(query));
    }
    if query.queries.len() != 1 {
        let a = error_reply(&query, ResponseCode::FormErr).map_or(Action::Drop, Action::Reply);
        return (a, Some(query));
    }
    let action = match answer_locally(&inner.table, peer, &query) {
        Some(mut resp) => {
            encode_fitting(&mut resp, transport, &query).map_or(Action::Drop, Action::Reply)
        }
        None if inner.upstreams.is_empty() => {
            error_reply(&query, ResponseCode::ServFail).map_or(Action::Drop, Action::Reply)
        }
        None => Action::Forward,
    };
    (action, Some(query))
}

/// A response skeleton for `query`: same id, opcode, question, RD; RA set; EDNS echoed.
fn response_for(query: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.checking_disabled = query.metadata.checking_disabled;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    resp.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_EDNS_PAYLOAD);
        resp.set_edns(edns);
    }
    resp
}

fn error_reply(query: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    response_for(query, rcode).to_vec().ok()
}

/// FORMERR for a packet that didn't parse, if at least its header's id and flags are there and
/// it's a query; otherwise drop it.
fn formerr_from_raw(packet: &[u8]) -> Action {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Action::Drop;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let op_code = OpCode::from_u8((packet[2] >> 3) & 0x0f);
    let mut resp = Message::error_msg(id, op_code, ResponseCode::FormErr);
    resp.metadata.recursion_available = true;
    resp.to_vec().map_or(Action::Drop, Action::Reply)
}

/// Encodes a local answer; over UDP, drops answers from the end until it fits the client's
/// limit, setting TC so the client can retry over TCP (what Docker's resolver does).
fn encode_fitting(resp: &mut Message, transport: Transport, query: &Message) -> Option<Vec<u8>> {
    let limit = match transport {
        Transport::Udp => udp_limit(query),
        Transport::Tcp => usize::from(u16::MAX),
    };
    loop {
        let bytes = resp.to_vec().ok()?;
        if bytes.len() <= limit || resp.answers.is_empty() {
            return Some(bytes);
        }
        resp.answers.pop();
        if transport == Transport::Udp {
            resp.metadata.truncation = true;
        }
    }
}

/// The table's answer, or `None` to forward.
fn answer_locally(table: &DnsTable, peer: SocketAddr, query: &Message) -> Option<Message> {
    let client = client_v4(peer)?;
    let q: &Query = query.queries.first()?;
    if q.query_class() != DNSClass::IN {
        return None;
    }
    let qname = q.name();
    let ascii = qname.to_ascii();
    let qtype = q.query_type();

    if qtype == RecordType::PTR {
        let ip = parse_in_addr_arpa(&ascii)?;
        let target = table.reverse(client, ip)?;
        let target = Name::from_ascii(format!("{target}.")).ok()?;
        let mut resp = response_for(query, ResponseCode::NoError);
        resp.metadata.authoritative = true;
        resp.add_answer(Record::from_rdata(
            qname.clone(),
            LOCAL_TTL_SECS,
            RData::PTR(PTR(target)),
        ));
        return Some(resp);
    }

    let ips = table.lookup(client, &ascii)?;
    let mut resp = response_for(query, ResponseCode::NoError);
    resp.metadata.authoritative = true;
    if matches!(qtype, RecordType::A | RecordType::ANY) {
        let ttl = Duration::from_secs(u64::from(LOCAL_TTL_SECS));
        table.note_handed_out(&ips, Instant::now(), ttl);
        for ip in ips {
            resp.add_answer(Record::from_rdata(
                qname.clone(),
                LOCAL_TTL_SECS,
                RData::A(A(ip)),
            ));
        }
    }
    // AAAA and every other type for a name we know: NOERROR, no answers (NODATA), so resolvers
    // don't go asking elsewhere or conclude the name doesn't exist.
    Some(resp)
}

/// `d.c.b.a.in-addr.arpa[.]` → a.b.c.d (case-insensitive); anything else → None.
fn parse_in_addr_arpa(name: &str) -> Option<Ipv4Addr> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let octets: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse::<u8>().ok())
        .collect::<Option<_>>()?;
    let [d, c, b, a] = octets.try_into().ok()?;
    Some(Ipv4Addr::new(a, b, c, d))
}

/// Forwards `raw` (the client's query as received) to the upstreams in turn. Returns the bytes to
/// send back: the first upstream answer, or SERVFAIL when none answered.
async fn forward(
    inner: &Shared,
    query: &Message,
    raw: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let id = query.metadata.id;
    for &upstream in &inner.upstreams {
        if inner
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&upstream)
        {
            debug!(%upstream, "not forwarding DNS to ourselves");
            continue;
        }
        let result = match transport {
            Transport::Tcp => forward_tcp(upstream, raw, id, inner.upstream_timeout).await,
            Transport::Udp => match forward_udp(upstream, raw, id, inner.upstream_timeout).await {
                Ok(resp) if is_truncated(&resp) => {
                    // Retry over TCP; pass the full answer on if it fits the client's UDP
                    // limit, else the truncated one (the client then retries over TCP itself).
                    match forward_tcp(upstream, raw, id, inner.upstream_timeout).await {
                        Ok(full) if full.len() <= udp_limit(query) => Ok(full),
                        _ => Ok(resp),
                    }
                }
                other => other,
            },
        };
        match result {
            Ok(resp) => return Some(resp),
            Err(e) => debug!(%upstream, error = %e, "DNS upstream failed"),
        }
    }
    warn!(
        name = %query.queries.first().map(|q| q.name().to_ascii()).unwrap_or_default(),
        "no DNS upstream answered: SERVFAIL"
    );
    error_reply(query, ResponseCode::ServFail)
}

fn is_truncated(resp: &[u8]) -> bool {
    resp.len() >= 3 && resp[2] & 0x02 != 0
}

/// Whether `resp` looks like the response to query `id` (id matches, QR set).
fn is_response_to(resp: &[u8], id: u16) -> bool {
    resp.len() >= 12 && u16::from_be_bytes([resp[0], resp[1]]) == id && resp[2] & 0x80 != 0
}

async fn forward_udp(
    upstream: SocketAddr,
    raw: &[u8],
    id: u16,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket (random source port) per query, connected: only the upstream's datagrams
    // reach it.
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::time::timeout_at(deadline, async {
        sock.send(raw).await?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = sock.recv(&mut buf).await?;
            if is_response_to(&buf[..n], id) {
                buf.truncate(n);
                return Ok(buf);
            }
            // Stray datagram: keep waiting for ours.
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

async fn forward_tcp(
    upstream: SocketAddr,
    raw: &[u8],
    id: u16,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(upstream).await?;
        write_framed(&mut stream, raw).await?;
        let resp = read_framed(&mut stream).await?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "upstream closed the connection",
            )
        })?;
        if !is_response_to(&resp, id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "upstream answered another query",
            ));
        }
        Ok(resp)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

#[cfg(test)]
mod tests;
