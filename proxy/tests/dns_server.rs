//! The DNS proxy with real UDP and TCP queries on loopback: local answers for the config's names
//! (FQDN, aliases, search-domain expansions), forwarding to a fake upstream resolver read from a
//! resolv.conf, live table updates, and malformed packets.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustmesh_proxy::dns::{DnsServer, DnsTable, ResolvConf};
use rustmesh_xds::config::DnsEntry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn entries() -> Vec<DnsEntry> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../xds/tests/fixtures/productpage.json"
    ))
    .unwrap();
    rustmesh_xds::ProxyConfig::from_json(&text).unwrap().dns
}

/// A fake upstream resolver (UDP and TCP on one port): answers every A query with 192.0.2.1
/// and counts what it was asked.
async fn fake_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let answer = |q: &[u8]| -> Vec<u8> {
        let q = Message::from_vec(q).unwrap();
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.recursion_available = true;
        m.add_queries(q.queries.iter().cloned());
        let name = q.queries[0].name().clone();
        m.add_answer(Record::from_rdata(
            name,
            60,
            RData::A(A("192.0.2.1".parse().unwrap())),
        ));
        m.to_vec().unwrap()
    };
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = udp.send_to(&answer(&buf[..n]), from).await;
        }
    });
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                while let Ok(len) = s.read_u16().await {
                    let mut q = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    let a = answer(&q);
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&a);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

struct Running {
    addr: SocketAddr,
    upstream_queries: Arc<AtomicUsize>,
    table: rustmesh_proxy::dns::SharedTable,
    _tmp: tempfile::TempDir,
}

async fn start() -> Running {
    let (up, upstream_queries) = fake_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("resolv.conf");
    std::fs::write(
        &path,
        format!(
            "nameserver {up}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        ),
    )
    .unwrap();
    let resolv = ResolvConf::read(&path).unwrap();
    let server = DnsServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        DnsTable::new(&entries()),
        resolv,
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let table = server.table();
    tokio::spawn(server.run());
    Running {
        addr,
        upstream_queries,
        table,
        _tmp: tmp,
    }
}

fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

async fn udp_ask(server: SocketAddr, packet: &[u8]) -> Option<Message> {
    udp_ask_within(server, packet, Duration::from_secs(2)).await
}

async fn udp_ask_within(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(wait, s.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buf[..n]).unwrap())
}

async fn tcp_ask(s: &mut TcpStream, packet: &[u8]) -> Message {
    let mut out = (packet.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(packet);
    s.write_all(&out).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_config_names_over_udp() {
    let r = start().await;
    for name in [
        "reviews.default.svc.cluster.local.",
        "reviews.",
        "Reviews.Default.",
        "reviews.default.svc.",
        // What a stub resolver with the search list asks first for `reviews.default`.
        "reviews.default.default.svc.cluster.local.",
        "reviews.default.svc.cluster.local.svc.cluster.local.",
    ] {
        let m = udp_ask(r.addr, &query(0x1234, name, RecordType::A))
            .await
            .expect(name);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(a_records(&m), ["10.96.10.4"], "{name}");
        assert_eq!(
            m.queries[0].name().to_ascii(),
            name,
            "{name}: the question is echoed"
        );
    }
    // A known name without IPv6 addresses: NOERROR, no answers.
    let m = udp_ask(r.addr, &query(7, "reviews.", RecordType::AAAA))
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(
        r.upstream_queries.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
}

#[tokio::test]
async fn forwards_other_names_and_types_to_the_resolv_conf_upstream() {
    let r = start().await;
    let m = udp_ask(r.addr, &query(9, "example.com.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(m.metadata.id, 9);
    assert_eq!(a_records(&m), ["192.0.2.1"]);
    let m = udp_ask(r.addr, &query(10, "reviews.", RecordType::TXT))
        .await
        .unwrap();
    assert_eq!(m.metadata.id, 10);
    assert_eq!(r.upstream_queries.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tcp_answers_and_forwards_several_queries_per_connection() {
    let r = start().await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let m = tcp_ask(
        &mut s,
        &query(1, "ratings.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(a_records(&m), ["10.96.10.3"]);
    let m = tcp_ask(&mut s, &query(2, "example.org.", RecordType::A)).await;
    assert_eq!(
        (m.metadata.id, a_records(&m)),
        (2, vec!["192.0.2.1".to_string()])
    );
    let m = tcp_ask(&mut s, &query(3, "kube-dns.kube-system.", RecordType::A)).await;
    assert_eq!(a_records(&m), ["10.96.0.10"]);
}

#[tokio::test]
async fn table_swaps_while_running() {
    let r = start().await;
    assert_eq!(
        a_records(
            &udp_ask(r.addr, &query(1, "reviews.", RecordType::A))
                .await
                .unwrap()
        ),
        ["10.96.10.4"]
    );
    r.table.store(Arc::new(DnsTable::new(&[DnsEntry {
        name: "reviews.default.svc.cluster.local".into(),
        aliases: vec!["reviews".into()],
        addresses: vec!["10.96.99.9".parse().unwrap()],
    }])));
    assert_eq!(
        a_records(
            &udp_ask(r.addr, &query(2, "reviews.", RecordType::A))
                .await
                .unwrap()
        ),
        ["10.96.99.9"]
    );
    // Removed names go upstream now.
    let m = udp_ask(r.addr, &query(3, "ratings.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_records(&m), ["192.0.2.1"]);
}

#[tokio::test]
async fn malformed_packets_are_dropped_and_the_server_keeps_serving() {
    let r = start().await;
    for junk in [
        &b""[..],
        b"\x00",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff",
        &[0xffu8; 600][..],
    ] {
        let dropped = udp_ask_within(r.addr, junk, Duration::from_millis(300)).await;
        assert!(dropped.is_none(), "{junk:?} got an answer");
    }
    // A response sent to the server is not a query: dropped.
    let mut resp = Message::from_vec(&query(5, "reviews.", RecordType::A)).unwrap();
    resp.metadata.message_type = MessageType::Response;
    let dropped = udp_ask_within(r.addr, &resp.to_vec().unwrap(), Duration::from_millis(300)).await;
    assert!(dropped.is_none());
    // TCP: garbage ends the connection, the listener stays up.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed");
    let m = udp_ask(r.addr, &query(6, "details.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_records(&m), ["10.96.10.1"]);
}
