//! Server tests: pure helpers, then real UDP/TCP exchanges on loopback only. Client scoping uses
//! distinct loopback source addresses (127.0.0.2, 127.0.0.3, ...): all of 127/8 is loopback.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

use super::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const REPLY_WAIT: Duration = Duration::from_secs(5);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn names(ns: &[&str]) -> Vec<String> {
    ns.iter().map(|s| s.to_string()).collect()
}

/// net1: the client (127.0.0.2) and two web tasks; net2: db (the client is not on it).
fn sample_table() -> DnsTable {
    let t = DnsTable::new();
    t.set_endpoint("client/net1", "net1", CLIENT, names(&["client"]));
    t.set_endpoint(
        "c1/net1",
        "net1",
        ip("10.0.0.5"),
        names(&["web.1.abc", "web", "tasks.web"]),
    );
    t.set_endpoint(
        "c2/net1",
        "net1",
        ip("10.0.0.6"),
        names(&["web.2.def", "web", "tasks.web"]),
    );
    t.set_endpoint("db/net2", "net2", ip("10.1.0.7"), names(&["db"]));
    t
}

fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

async fn udp_raw(
    from: Ipv4Addr,
    server: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((from, 0)).await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp_ask(from: Ipv4Addr, server: SocketAddr, q: &Message) -> (Message, usize) {
    let raw = udp_raw(from, server, &q.to_vec().unwrap(), REPLY_WAIT)
        .await
        .expect("no UDP reply");
    let resp = Message::from_vec(&raw).unwrap();
    assert_eq!(resp.metadata.id, q.metadata.id);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    (resp, raw.len())
}

async fn tcp_ask(from: Ipv4Addr, server: SocketAddr, q: &Message) -> Message {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap();
    let mut stream = sock.connect(server).await.unwrap();
    let bytes = q.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(REPLY_WAIT, stream.read_exact(&mut len))
        .await
        .expect("no TCP reply")
        .unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).await.unwrap();
    let resp = Message::from_vec(&msg).unwrap();
    assert_eq!(resp.metadata.id, q.metadata.id);
    resp
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.sort();
    v
}

// ---- pure helpers ----

#[test]
fn resolv_conf_parsing() {
    let text = "\
# generated
search example.com
nameserver 10.0.0.53
nameserver   1.1.1.1  # trailing comment
;nameserver 9.9.9.9
nameserver 10.0.0.53
nameserver 2001:db8::1
nameserver fe80::1%eth0
nameserver bogus
options ndots:2
nameserver
";
    assert_eq!(
        DnsServer::upstreams_from_resolv_conf(text),
        vec![
            "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
            "1.1.1.1:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
        ]
    );
    assert!(DnsServer::upstreams_from_resolv_conf("").is_empty());
}

#[test]
fn in_addr_arpa_parsing() {
    assert_eq!(
        parse_in_addr_arpa("5.0.0.10.in-addr.arpa."),
        Some(ip("10.0.0.5"))
    );
    assert_eq!(
        parse_in_addr_arpa("5.0.0.10.IN-ADDR.ARPA"),
        Some(ip("10.0.0.5"))
    );
    assert_eq!(parse_in_addr_arpa("0.0.10.in-addr.arpa."), None);
    assert_eq!(parse_in_addr_arpa("1.5.0.0.10.in-addr.arpa."), None);
    assert_eq!(parse_in_addr_arpa("256.0.0.10.in-addr.arpa."), None);
    assert_eq!(parse_in_addr_arpa("web."), None);
}

#[test]
fn bind_error_says_what_and_where() {
    let e = DnsError::Bind {
        addr: "172.18.0.1:53".parse().unwrap(),
        proto: "udp",
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    };
    let msg = e.to_string();
    assert!(
        msg.starts_with("bind DNS listener on 172.18.0.1:53/udp: "),
        "{msg}"
    );
}

// ---- loopback exchanges ----

#[tokio::test]
async fn answers_a_records_over_udp_and_tcp() {
    let server = DnsServer::new(sample_table(), vec![]);
    let addr = server.listen(loopback0()).await.unwrap();
    assert_ne!(addr.port(), 0);

    for name in ["web", "web.", "WEB.", "tasks.web."] {
        let q = query(name, RecordType::A, None);
        let (resp, _) = udp_ask(CLIENT, addr, &q).await;
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(resp.metadata.authoritative);
        assert!(resp.metadata.recursion_desired);
        assert_eq!(
            sorted(a_records(&resp)),
            vec![ip("10.0.0.5"), ip("10.0.0.6")],
            "{name}"
        );
        assert!(resp.answers.iter().all(|r| r.ttl == LOCAL_TTL_SECS));
        assert_eq!(resp.queries.len(), 1);
        assert_eq!(resp.queries[0].query_type(), RecordType::A);
        assert_eq!(
            resp.queries[0].name().to_ascii().trim_end_matches('.'),
            name.trim_end_matches('.')
        );

        let resp = tcp_ask(CLIENT, addr, &q).await;
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            sorted(a_records(&resp)),
            vec![ip("10.0.0.5"), ip("10.0.0.6")]
        );
    }

    // EDNS is echoed.
    let (resp, _) = udp_ask(
        CLIENT,
        addr,
        &query("web.1.abc.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(resp.edns.is_some());
    assert_eq!(a_records(&resp), vec![ip("10.0.0.5")]);
}

#[tokio::test]
async fn aaaa_for_known_name_is_nodata_and_ptr_answers() {
    let server = DnsServer::new(sample_table(), vec![]);
    let addr = server.listen(loopback0()).await.unwrap();

    let (resp, _) = udp_ask(CLIENT, addr, &query("web.", RecordType::AAAA, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.answers.is_empty());

    let (resp, _) = udp_ask(
        CLIENT,
        addr,
        &query("6.0.0.10.in-addr.arpa.", RecordType::PTR, None),
    )
    .await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(resp.answers.len(), 1);
    match &resp.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.2.def."),
        other => panic!("not a PTR: {other:?}"),
    }
    // db's address is not on the client's networks: not ours, and no upstream → SERVFAIL.
    let (resp, _) = udp_ask(
        CLIENT,
        addr,
        &query("7.0.1.10.in-addr.arpa.", RecordType::PTR, None),
    )
    .await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn scoping_and_no_upstreams() {
    let server = DnsServer::new(sample_table(), vec![]);
    let addr = server.listen(loopback0()).await.unwrap();
    // db lives on net2, the client only on net1.
    let (resp, _) = udp_ask(CLIENT, addr, &query("db.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    // A source address that is no container gets forwarding only (none here → SERVFAIL).
    let (resp, _) = udp_ask(STRANGER, addr, &query("web.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    assert!(resp.answers.is_empty());
    // Registering it makes the names visible right away.
    server
        .table()
        .set_endpoint("stranger/net2", "net2", STRANGER, names(&["stranger"]));
    let (resp, _) = udp_ask(STRANGER, addr, &query("db.", RecordType::A, None)).await;
    assert_eq!(a_records(&resp), vec![ip("10.1.0.7")]);
}

#[tokio::test]
async fn round_robin_over_the_wire() {
    let table = sample_table();
    table.set_endpoint("c3/net1", "net1", ip("10.0.0.7"), names(&["web"]));
    let server = DnsServer::new(table, vec![]);
    let addr = server.listen(loopback0()).await.unwrap();
    let mut prev: Option<Vec<Ipv4Addr>> = None;
    let mut firsts = HashSet::new();
    for _ in 0..6 {
        let (resp, _) = udp_ask(CLIENT, addr, &query("web.", RecordType::A, None)).await;
        let ans = a_records(&resp);
        assert_eq!(ans.len(), 3);
        if let Some(p) = &prev {
            assert_ne!(p, &ans);
        }
        firsts.insert(ans[0]);
        prev = Some(ans);
    }
    assert_eq!(firsts.len(), 3);
}

/// An upstream made of another DnsServer: it sees the forwarder's source address, 127.0.0.1,
/// so that address is registered as a client there.
async fn upstream_server(extra: &[(&str, Ipv4Addr)]) -> (DnsServer, SocketAddr) {
    let t = DnsTable::new();
    t.set_endpoint("fwd/up", "up", Ipv4Addr::LOCALHOST, names(&["forwarder"]));
    t.set_endpoint(
        "ext/up",
        "up",
        ip("192.0.2.1"),
        names(&["external.example"]),
    );
    for (i, (name, addr)) in extra.iter().enumerate() {
        t.set_endpoint(&format!("x{i}/up"), "up", *addr, names(&[name]));
    }
    let s = DnsServer::new(t, vec![]);
    let addr = s.listen(loopback0()).await.unwrap();
    (s, addr)
}

#[tokio::test]
async fn forwards_unknown_names_over_udp_and_tcp() {
    let (_up, up_addr) = upstream_server(&[]).await;
    let server = DnsServer::new(sample_table(), vec![up_addr]);
    let addr = server.listen(loopback0()).await.unwrap();

    let q = query("external.example.", RecordType::A, None);
    let (resp, _) = udp_ask(CLIENT, addr, &q).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&resp), vec![ip("192.0.2.1")]);
    let resp = tcp_ask(CLIENT, addr, &q).await;
    assert_eq!(a_records(&resp), vec![ip("192.0.2.1")]);
    // Non-containers are forwarded too, even for names the table has.
    let (resp, _) = udp_ask(STRANGER, addr, &q).await;
    assert_eq!(a_records(&resp), vec![ip("192.0.2.1")]);
    // The upstream's own answer codes come back as they are (SERVFAIL: it has no upstream).
    let (resp, _) = udp_ask(
        CLIENT,
        addr,
        &query("nowhere.example.", RecordType::A, None),
    )
    .await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    // Local names still answered locally.
    let (resp, _) = udp_ask(CLIENT, addr, &query("web.", RecordType::A, None)).await;
    assert_eq!(a_records(&resp).len(), 2);
}

#[tokio::test]
async fn dead_upstreams_give_servfail_and_next_upstream_is_tried() {
    // One that refuses (closed port) and one that never answers.
    let closed = {
        let s = UdpSocket::bind(loopback0()).await.unwrap();
        s.local_addr().unwrap()
    };
    let silent = UdpSocket::bind(loopback0()).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();

    let server = DnsServer::new(sample_table(), vec![closed, silent_addr])
        .with_upstream_timeout(Duration::from_millis(300));
    let addr = server.listen(loopback0()).await.unwrap();
    let started = Instant::now();
    let (resp, _) = udp_ask(
        CLIENT,
        addr,
        &query("external.example.", RecordType::A, None),
    )
    .await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let resp = tcp_ask(
        CLIENT,
        addr,
        &query("external.example.", RecordType::A, None),
    )
    .await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);

    // Dead ones first, then a live one: the live one answers.
    let (_up, up_addr) = upstream_server(&[]).await;
    let server = DnsServer::new(sample_table(), vec![closed, silent_addr, up_addr])
        .with_upstream_timeout(Duration::from_millis(300));
    let addr = server.listen(loopback0()).await.unwrap();
    let (resp, _) = udp_ask(
        CLIENT,
        addr,
        &query("external.example.", RecordType::A, None),
    )
    .await;
    assert_eq!(a_records(&resp), vec![ip("192.0.2.1")]);
    drop(silent);
}

/// A fake upstream whose UDP answers are always truncated (TC, no answers) and whose TCP answers
/// carry one A record. Returns its address and how many TCP queries it served.
async fn truncating_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let udp = UdpSocket::bind(loopback0()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let tcp_count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = response_for(&q, ResponseCode::NoError);
            r.metadata.truncation = true;
            let _ = udp.send_to(&r.to_vec().unwrap(), peer).await;
        }
    });
    let count = tcp_count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(Some(raw)) = read_framed(&mut s).await else {
                continue;
            };
            let q = Message::from_vec(&raw).unwrap();
            let mut r = response_for(&q, ResponseCode::NoError);
            r.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(A(ip("192.0.2.77"))),
            ));
            let _ = write_framed(&mut s, &r.to_vec().unwrap()).await;
        }
    });
    (addr, tcp_count)
}

#[tokio::test]
async fn truncated_upstream_answer_is_retried_over_tcp() {
    let (up, tcp_count) = truncating_upstream().await;
    let server = DnsServer::new(sample_table(), vec![up]);
    let addr = server.listen(loopback0()).await.unwrap();
    let (resp, _) = udp_ask(CLIENT, addr, &query("big.example.", RecordType::A, None)).await;
    assert!(!resp.metadata.truncation);
    assert_eq!(a_records(&resp), vec![ip("192.0.2.77")]);
    assert_eq!(tcp_count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_only() {
    let table = sample_table();
    for i in 0..60u8 {
        table.set_endpoint(
            &format!("big{i}/net1"),
            "net1",
            Ipv4Addr::new(10, 0, 1, i),
            names(&["big"]),
        );
    }
    let server = DnsServer::new(table, vec![]);
    let addr = server.listen(loopback0()).await.unwrap();

    let (resp, len) = udp_ask(CLIENT, addr, &query("big.", RecordType::A, None)).await;
    assert!(resp.metadata.truncation);
    assert!(len <= 512, "{len}");
    let n = a_records(&resp).len();
    assert!(n > 0 && n < 60, "{n}");

    let (resp, _) = udp_ask(CLIENT, addr, &query("big.", RecordType::A, Some(4096))).await;
    assert!(!resp.metadata.truncation);
    assert_eq!(a_records(&resp).len(), 60);

    let resp = tcp_ask(CLIENT, addr, &query("big.", RecordType::A, None)).await;
    assert!(!resp.metadata.truncation);
    assert_eq!(a_records(&resp).len(), 60);

    // Forwarded over UDP by another server in front: the truncated UDP answer is retried over
    // TCP, but 60 records don't fit the client's 512 bytes, so the truncated one is passed on.
    let front_table = DnsTable::new();
    front_table.set_endpoint("client/x", "x", CLIENT, names(&["client"]));
    // The front server forwards from 127.0.0.1: make that a client on net1 of the back server.
    server
        .table()
        .set_endpoint("fwd/net1", "net1", Ipv4Addr::LOCALHOST, names(&["fwd"]));
    let front = DnsServer::new(front_table, vec![addr]);
    let front_addr = front.listen(loopback0()).await.unwrap();
    let (resp, len) = udp_ask(CLIENT, front_addr, &query("big.", RecordType::A, None)).await;
    assert!(resp.metadata.truncation);
    assert!(len <= 512);
    let resp = tcp_ask(CLIENT, front_addr, &query("big.", RecordType::A, None)).await;
    assert_eq!(a_records(&resp).len(), 60);
}

#[tokio::test]
async fn malformed_and_odd_packets() {
    let server = DnsServer::new(sample_table(), vec![]);
    let addr = server.listen(loopback0()).await.unwrap();
    let short = Duration::from_millis(300);

    // Too short to have a header: dropped.
    assert_eq!(udp_raw(CLIENT, addr, &[1, 2, 3], short).await, None);
    // A header announcing a question that isn't there: FORMERR with the same id.
    let mut bad = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[3, b'w', b'e']);
    let raw = udp_raw(CLIENT, addr, &bad, REPLY_WAIT)
        .await
        .expect("FORMERR");
    let resp = Message::from_vec(&raw).unwrap();
    assert_eq!(resp.metadata.id, 0xabcd);
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);
    // A response sent to us: never answered.
    let mut r = query("web.", RecordType::A, None);
    r.metadata.message_type = MessageType::Response;
    assert_eq!(
        udp_raw(CLIENT, addr, &r.to_vec().unwrap(), short).await,
        None
    );
    // Two questions: FORMERR.
    let mut two = query("web.", RecordType::A, None);
    two.add_query(Query::query(
        Name::from_ascii("db.").unwrap(),
        RecordType::A,
    ));
    let (resp, _) = udp_ask(CLIENT, addr, &two).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr);
    // Not a standard query: NOTIMP.
    let mut notify = query("web.", RecordType::SOA, None);
    notify.metadata.op_code = OpCode::Notify;
    let (resp, _) = udp_ask(CLIENT, addr, &notify).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::NotImp);
    // Garbage over TCP: the connection gets FORMERR or is closed, the server lives on.
    {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(short, s.read_to_end(&mut sink)).await;
    }
    // Still serving.
    let (resp, _) = udp_ask(CLIENT, addr, &query("web.", RecordType::A, None)).await;
    assert_eq!(a_records(&resp).len(), 2);
    let resp = tcp_ask(CLIENT, addr, &query("web.", RecordType::A, None)).await;
    assert_eq!(a_records(&resp).len(), 2);
}

#[tokio::test]
async fn listen_unlisten_and_bind_errors() {
    let server = DnsServer::new(sample_table(), vec![]);
    let addr = server.listen(loopback0()).await.unwrap();
    // Idempotent on the bound address.
    assert_eq!(server.listen(addr).await.unwrap(), addr);
    assert_eq!(server.listening(), vec![addr]);

    // Another server can't take the same address: the error names it.
    let other = DnsServer::new(DnsTable::new(), vec![]);
    let err = other.listen(addr).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("bind DNS listener on {addr}/udp")),
        "{msg}"
    );

    // Stop: nothing answers any more, and the port can be listened on again.
    server.unlisten(addr).await;
    assert!(server.listening().is_empty());
    let q = query("web.", RecordType::A, None).to_vec().unwrap();
    assert_eq!(
        udp_raw(CLIENT, addr, &q, Duration::from_millis(300)).await,
        None
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(other.listen(addr).await.unwrap(), addr);
    // Unknown address: no-op.
    server.unlisten(addr).await;
    other.unlisten(addr).await;
}

#[tokio::test]
async fn dropping_the_server_stops_its_listeners() {
    let server = DnsServer::new(sample_table(), vec![]);
    let addr = server.listen(loopback0()).await.unwrap();
    drop(server);
    // The loops are aborted; give the runtime a moment to drop them.
    let q = query("web.", RecordType::A, None).to_vec().unwrap();
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if UdpSocket::bind(addr).await.is_ok() {
            freed = true;
            break;
        }
    }
    assert!(freed, "port still bound after drop");
    assert_eq!(
        udp_raw(CLIENT, addr, &q, Duration::from_millis(100)).await,
        None
    );
}

#[tokio::test]
async fn never_forwards_to_itself() {
    // Take a free port, then listen on it with itself as the only upstream.
    let a = {
        let probe = UdpSocket::bind(loopback0()).await.unwrap();
        probe.local_addr().unwrap()
    };
    let server = DnsServer::new(sample_table(), vec![a]);
    assert_eq!(server.listen(a).await.unwrap(), a);
    let started = Instant::now();
    let (resp, _) = udp_ask(CLIENT, a, &query("external.example.", RecordType::A, None)).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
