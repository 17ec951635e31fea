//! Shared by the tests of DNS clusters (`dns_cluster`, `router`): a DNS server of the test's
//! own on loopback (UDP), answering A queries from a table the test changes, or SERVFAIL when
//! told to fail, and a resolv.conf naming it (`nameserver 127.0.0.1:PORT`, the proxy's test
//! extension), so the sidecar's resolver asks it and nothing else.
#![allow(dead_code)]

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// The TTL of every answer, in seconds (the shortest wait the resolver allows before it asks
/// again).
pub const TTL: u32 = 1;

/// A running test DNS server; it serves until its runtime ends.
#[derive(Clone)]
pub struct TestDns {
    pub addr: SocketAddr,
    table: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    fail: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
}

impl TestDns {
    /// Starts a server on 127.0.0.1 (a free port) on the current Tokio runtime.
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dns = TestDns {
            addr: socket.local_addr().unwrap(),
            table: Arc::default(),
            fail: Arc::default(),
            asked: Arc::default(),
        };
        let server = dns.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(answer) = server.answer(&buf[..n]) {
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        dns
    }

    /// The answer to one query: the table's addresses for its name (none: NOERROR without
    /// records), or SERVFAIL when failing.
    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let q = Message::from_vec(query).ok()?;
        self.asked.fetch_add(1, Ordering::SeqCst);
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.recursion_available = true;
        m.add_queries(q.queries.iter().cloned());
        if self.fail.load(Ordering::SeqCst) {
            m.metadata.response_code = ResponseCode::ServFail;
            return m.to_vec().ok();
        }
        let name = q.queries.first()?.name().clone();
        let key = name.to_string().trim_end_matches('.').to_ascii_lowercase();
        let addrs = self.table.lock().unwrap().get(&key).cloned();
        for ip in addrs.into_iter().flatten() {
            m.add_answer(Record::from_rdata(name.clone(), TTL, RData::A(A(ip))));
        }
        m.to_vec().ok()
    }

    /// From now on, `name` has `addrs`.
    pub fn set(&self, name: &str, addrs: &[&str]) {
        let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
        self.table.lock().unwrap().insert(name.to_string(), addrs);
    }

    /// From now on, every query gets SERVFAIL (`true`) or its answer (`false`).
    pub fn fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// How many queries it was asked.
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    /// Writes a resolv.conf naming this server into `dir`; returns its path.
    pub fn resolv_conf(&self, dir: &Path) -> PathBuf {
        let path = dir.join("resolv.conf");
        std::fs::write(&path, format!("nameserver {}\n", self.addr)).unwrap();
        path
    }
}
