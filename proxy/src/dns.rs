//! The DNS proxy (Istio's "DNS capture"): the init step redirects the app's DNS queries (UDP
//! and TCP port 53) to 127.0.0.1:15053, where this server answers A/AAAA for every name of the
//! configuration's `dns` table and forwards everything else to the pod's real resolvers.
//!
//! * Names: each entry's FQDN and aliases (`reviews.default.svc.cluster.local`, `reviews`,
//!   `reviews.default`...), case-insensitive, with or without the trailing dot.
//! * Search-domain expansions: a stub resolver with `search default.svc.cluster.local ...` and
//!   `ndots:5` asks `reviews.default.svc.cluster.local.default.svc.cluster.local.` before the
//!   FQDN; as Istio does, a name that ends with a search domain and whose remainder is a known
//!   name is answered with a CNAME to the entry's FQDN and its addresses, sparing the round trips
//!   to the upstream resolver.
//! * A known name with no address of the asked family gets an empty NOERROR answer (NODATA);
//!   other record types and unknown names are forwarded as they are to the `nameserver`s of the
//!   resolv.conf (UDP queries over UDP, TCP over TCP), and the answer is relayed unchanged.
//! * The table is swapped atomically ([`DnsServer::update`]) when a new configuration arrives.
//! * Packets that are not DNS queries are dropped (UDP) or end the connection (TCP); nothing in
//!   a packet can panic the server.
//!
//! Message encoding and decoding use `hickory-proto`.
//!
//! The sidecar's own connections by name (the mesh CA, a tracing collector) are not captured,
//! so their queries would bypass this table: [`resolve`] looks there first (a [`NameTable`]),
//! then asks the system resolver, so they reach services where the cluster has no DNS, as the
//! app's queries do.

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustmesh_xds::config::DnsEntry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Looks a host name up in the mesh's name table (the `dns` entries of the configuration the
/// sidecar serves): an entry's FQDN or alias gives its first address.
pub type NameTable = Arc<dyn Fn(&str) -> Option<IpAddr> + Send + Sync>;

/// How long the system resolver may take for one of the sidecar's own names.
pub const SYSTEM_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The address of `host:port` for the sidecar's own connections: an IP literal as is, else the
/// mesh's name table, else the system resolver (within [`SYSTEM_RESOLVE_TIMEOUT`]). The error
/// says the name was not found, so a failed connection never hides a naming problem.
pub async fn resolve(
    host: &str,
    port: u16,
    names: Option<&NameTable>,
) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((ip, port).into());
    }
    if let Some(ip) = names.and_then(|n| n(host)) {
        return Ok((ip, port).into());
    }
    match tokio::time::timeout(
        SYSTEM_RESOLVE_TIMEOUT,
        tokio::net::lookup_host((host, port)),
    )
    .await
    {
        Ok(Ok(mut addrs)) => addrs
            .next()
            .ok_or_else(|| format!("{host} is neither in the mesh's name table nor resolvable")),
        Ok(Err(e)) => Err(format!(
            "{host} is neither in the mesh's name table nor resolvable: {e}"
        )),
        Err(_) => Err(format!(
            "{host} is not in the mesh's name table and the system resolver did not answer \
             within {SYSTEM_RESOLVE_TIMEOUT:?}"
        )),
    }
}

/// TTL of local answers (Istio's).
pub const TTL: u32 = 30;
/// How long to wait for an upstream resolver.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle TCP client connection is kept.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the DNS proxy.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// resolv.conf could not be read.
    #[error("could not read {path}: {source}")]
    ReadResolvConf {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `nameserver` line of resolv.conf is not an address.
    #[error("resolv.conf line {line}: nameserver {value:?} is not an IP address")]
    BadNameserver {
        /// 1-based line number.
        line: usize,
        /// The value.
        value: String,
    },
    /// Binding the listening sockets failed.
    #[error("could not bind the DNS proxy on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the proxy needs from the pod's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Upstream resolvers, in order (port 53 unless written `ip:port` / `[ipv6]:port`, an
    /// extension for tests).
    pub nameservers: Vec<SocketAddr>,
    /// Search domains, without trailing dots.
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (`nameserver`, `search`, `domain`; other lines ignored).
    pub fn parse(text: &str) -> Result<Self, DnsError> {
        let mut rc = ResolvConf::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split(['#', ';']).next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let value = words.next().unwrap_or("");
                    let addr = value
                        .parse::<SocketAddr>()
                        .ok()
                        .or_else(|| {
                            value
                                .parse::<IpAddr>()
                                .ok()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .ok_or_else(|| DnsError::BadNameserver {
                            line: i + 1,
                            value: value.to_string(),
                        })?;
                    rc.nameservers.push(addr);
                }
                // The last `search`/`domain` line wins, as in glibc.
                Some("search") | Some("domain") => {
                    rc.search = words
                        .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|w| !w.is_empty())
                        .collect();
                }
                _ => {}
            }
        }
        Ok(rc)
    }

    /// Reads and parses a resolv.conf file.
    pub fn read(path: &Path) -> Result<Self, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::ReadResolvConf {
            path: path.display().to_string(),
            source,
        })?;
        ResolvConf::parse(&text)
    }
}

/// One known host: its canonical name and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    /// The FQDN (canonical name for CNAME answers).
    pub fqdn: String,
    /// IPv4 addresses.
    pub v4: Vec<std::net::Ipv4Addr>,
    /// IPv6 addresses.
    pub v6: Vec<std::net::Ipv6Addr>,
}

/// The names the proxy answers for.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    names: HashMap<String, Arc<DnsHost>>,
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsTable {
    /// Builds the table from the configuration's `dns` entries. When two entries claim a name,
    /// the first keeps it.
    pub fn new(entries: &[DnsEntry]) -> Self {
        let mut names = HashMap::new();
        for e in entries {
            let host = Arc::new(DnsHost {
                fqdn: normalise(&e.name),
                v4: e
                    .addresses
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect(),
                v6: e
                    .addresses
                    .iter()
                    .filter_map(|a| match a {
                        IpAddr::V6(v6) => Some(*v6),
                        IpAddr::V4(_) => None,
                    })
                    .collect(),
            });
            for n in std::iter::once(&e.name).chain(&e.aliases) {
                let n = normalise(n);
                if !n.is_empty() {
                    names.entry(n).or_insert_with(|| host.clone());
                }
            }
        }
        DnsTable { names }
    }

    /// The host for a name as queried (any case, trailing dot optional).
    pub fn get(&self, name: &str) -> Option<&Arc<DnsHost>> {
        self.names.get(&normalise(name))
    }

    /// The host for `name`, also trying it with each search domain stripped. The flag says
    /// whether a search domain was stripped (the answer then starts with a CNAME).
    pub fn resolve(&self, name: &str, search: &[String]) -> Option<(Arc<DnsHost>, bool)> {
        let n = normalise(name);
        if let Some(h) = self.names.get(&n) {
            return Some((h.clone(), false));
        }
        search.iter().find_map(|s| {
            let stem = n.strip_suffix(s.as_str())?.strip_suffix('.')?;
            self.names.get(stem).map(|h| (h.clone(), true))
        })
    }

    /// Number of names (FQDNs and aliases).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What to do with one incoming packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send this answer back.
    Answer(Vec<u8>),
    /// Not ours: forward the query unchanged to the upstream resolvers.
    Forward,
    /// Not a DNS query: drop it.
    Drop,
}

/// Decides on one packet: answer from `table`, forward, or drop. `max_udp` is the largest
/// answer that fits (512, or the client's EDNS size) for UDP; `None` for TCP.
pub fn decide(
    packet: &[u8],
    table: &DnsTable,
    search: &[String],
    max_udp: Option<usize>,
) -> Decision {
    let Ok(query) = Message::from_vec(packet) else {
        return Decision::Drop;
    };
    if query.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    let reply = |code: ResponseCode| {
        let mut m = Message::response(query.metadata.id, query.metadata.op_code);
        m.metadata.recursion_desired = query.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.response_code = code;
        m.add_queries(query.queries.iter().cloned());
        m
    };
    let encode = |m: &Message| match m.to_vec() {
        Ok(b) => Decision::Answer(b),
        Err(_) => Decision::Drop,
    };
    if query.metadata.op_code != OpCode::Query {
        return encode(&reply(ResponseCode::NotImp));
    }
    if query.queries.len() != 1 {
        return encode(&reply(ResponseCode::FormErr));
    }
    let q: &Query = &query.queries[0];
    let qtype = q.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return Decision::Forward;
    }
    let qname_text = q.name().to_ascii();
    let Some((host, via_search)) = table.resolve(&qname_text, search) else {
        return Decision::Forward;
    };
    let mut m = reply(ResponseCode::NoError);
    m.metadata.authoritative = true;
    let owner = q.name().clone();
    let canonical = if via_search {
        match Name::from_ascii(format!("{}.", host.fqdn)) {
            Ok(target) => {
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::CNAME(CNAME(target.clone())),
                ));
                target
            }
            Err(_) => owner.clone(),
        }
    } else {
        owner.clone()
    };
    match qtype {
        RecordType::A => {
            for ip in &host.v4 {
                m.add_answer(Record::from_rdata(canonical.clone(), TTL, RData::A(A(*ip))));
            }
        }
        _ => {
            for ip in &host.v6 {
                m.add_answer(Record::from_rdata(
                    canonical.clone(),
                    TTL,
                    RData::AAAA(AAAA(*ip)),
                ));
            }
        }
    }
    if let Some(e) = &query.edns {
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(e.max_payload().max(512));
        m.set_edns(edns);
    }
    let Ok(bytes) = m.to_vec() else {
        return Decision::Drop;
    };
    if let Some(max) = max_udp {
        let limit = query
            .edns
            .as_ref()
            .map(|e| usize::from(e.max_payload()).clamp(512, 4096))
            .unwrap_or(512)
            .min(max);
        if bytes.len() > limit {
            return encode(&m.truncate());
        }
    }
    Decision::Answer(bytes)
}

/// The table a running server answers from, swappable while it runs.
pub type SharedTable = Arc<ArcSwap<DnsTable>>;

/// A DNS proxy bound to one address on UDP and TCP.
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    table: SharedTable,
    resolv: Arc<ResolvConf>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (production: 127.0.0.1:15053). With port 0 the TCP listener
    /// takes the port UDP got.
    pub async fn bind(
        addr: SocketAddr,
        table: DnsTable,
        resolv: ResolvConf,
    ) -> Result<Self, DnsError> {
        let bind_err = |source| DnsError::Bind { addr, source };
        // With port 0, UDP picks a port that TCP may not have free: try again a few times.
        let mut tries = if addr.port() == 0 { 20 } else { 1 };
        let (udp, tcp) = loop {
            tries -= 1;
            let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
            let udp_addr = udp.local_addr().map_err(bind_err)?;
            match TcpListener::bind(udp_addr).await {
                Ok(tcp) => break (udp, tcp),
                Err(e) if tries > 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(bind_err(e)),
            }
        };
        Ok(DnsServer {
            udp: Arc::new(udp),
            tcp,
            table: Arc::new(ArcSwap::from_pointee(table)),
            resolv: Arc::new(resolv),
        })
    }

    /// The bound address (same port for UDP and TCP).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// A handle to swap the table while the server runs.
    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// Replaces the table with the entries of a new configuration.
    pub fn update(&self, entries: &[DnsEntry]) {
        self.table.store(Arc::new(DnsTable::new(entries)));
    }

    /// Serves until the task is dropped or aborted.
    pub async fn run(self) {
        let udp = tokio::spawn(serve_udp(
            self.udp.clone(),
            self.table.clone(),
            self.resolv.clone(),
        ));
        let tcp = serve_tcp(self.tcp, self.table.clone(), self.resolv.clone());
        // Dropping this future aborts the UDP loop too.
        let _guard = AbortOnDrop(udp);
        tcp.await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, table: SharedTable, resolv: Arc<ResolvConf>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on some systems; keep serving.
                tracing::debug!(error = %e, "dns: udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        match decide(&packet, &table.load(), &resolv.search, Some(4096)) {
            Decision::Answer(bytes) => {
                let _ = sock.send_to(&bytes, from).await;
            }
            Decision::Drop => {}
            Decision::Forward => {
                let sock = sock.clone();
                let resolv = resolv.clone();
                tokio::spawn(async move {
                    if let Some(answer) = forward_udp(&packet, &resolv.nameservers).await {
                        let _ = sock.send_to(&answer, from).await;
                    }
                });
            }
        }
    }
}

/// Asks the `upstreams` (in turn, over UDP, [`UPSTREAM_TIMEOUT`] each) for the A records of
/// `name` (as an absolute name) for a DNS cluster: the addresses (at most `max`, in the
/// answer's order, CNAME targets' included) and the smallest TTL among them. NXDOMAIN and an
/// answer without A records are answers without addresses; no answer, a truncated one or
/// another error code is an error naming the name.
pub async fn query_upstream(
    name: &str,
    upstreams: &[SocketAddr],
    max: usize,
) -> Result<(Vec<IpAddr>, u32), String> {
    let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(fqdn, RecordType::A));
    let bytes = q
        .to_vec()
        .map_err(|e| format!("could not encode a query for {name}: {e}"))?;
    let answer = forward_udp(&bytes, upstreams)
        .await
        .ok_or_else(|| format!("no resolver of {upstreams:?} answered for {name}"))?;
    let m = Message::from_vec(&answer)
        .map_err(|e| format!("the answer for {name} does not decode: {e}"))?;
    if m.metadata.truncation {
        return Err(format!("the answer for {name} was truncated"));
    }
    match m.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok((Vec::new(), 0)),
        code => return Err(format!("the resolver answered {code} for {name}")),
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for r in &m.answers {
        if let RData::A(a) = &r.data {
            if addrs.len() < max && !addrs.contains(&IpAddr::V4(a.0)) {
                addrs.push(IpAddr::V4(a.0));
            }
            ttl = ttl.min(r.ttl);
        }
    }
    Ok((addrs, if ttl == u32::MAX { 0 } else { ttl }))
}

/// Asks each upstream in turn over UDP; the first answer with the query's id wins.
async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65_535];
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if n >= 12 && &buf[..2] == id {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        if let Ok(Some(answer)) = got {
            return Some(answer);
        }
    }
    None
}

async fn serve_tcp(listener: TcpListener, table: SharedTable, resolv: Arc<ResolvConf>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let table = table.clone();
        let resolv = resolv.clone();
        tokio::spawn(async move {
            let _ = tcp_client(stream, table, resolv).await;
        });
    }
}

async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16())
        .await
        .ok()?
        .ok()?;
    let mut buf = vec![0u8; usize::from(len)];
    tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf)
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

async fn tcp_client(
    mut stream: TcpStream,
    table: SharedTable,
    resolv: Arc<ResolvConf>,
) -> Option<()> {
    loop {
        let query = read_frame(&mut stream).await?;
        let answer = match decide(&query, &table.load(), &resolv.search, None) {
            Decision::Answer(b) => b,
            Decision::Drop => return None,
            Decision::Forward => forward_tcp(&query, &resolv.nameservers).await?,
        };
        write_frame(&mut stream, &answer).await.ok()?;
    }
}

/// Asks each upstream in turn over TCP.
async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let attempt = async {
            let mut s = TcpStream::connect(up).await.ok()?;
            write_frame(&mut s, query).await.ok()?;
            let len = s.read_u16().await.ok()?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        if let Ok(Some(answer)) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(answer);
        }
    }
    None
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn own_names_resolve_through_the_mesh_table_first() {
        let names: NameTable =
            Arc::new(|h: &str| (h == "zipkin.istio-system").then(|| "10.96.7.7".parse().unwrap()));
        assert_eq!(
            resolve("zipkin.istio-system", 9411, Some(&names)).await,
            Ok("10.96.7.7:9411".parse().unwrap())
        );
        assert_eq!(
            resolve("10.0.0.1", 80, Some(&names)).await,
            Ok("10.0.0.1:80".parse().unwrap())
        );
        let e = resolve("nowhere.invalid", 80, Some(&names))
            .await
            .unwrap_err();
        assert!(
            e.contains("nowhere.invalid") && e.contains("name table"),
            "{e}"
        );
    }
    use super::*;

    fn table() -> DnsTable {
        DnsTable::new(&[
            DnsEntry {
                name: "reviews.default.svc.cluster.local".into(),
                aliases: vec!["reviews".into(), "reviews.default".into()],
                addresses: vec!["10.96.10.4".parse().unwrap(), "fd00::4".parse().unwrap()],
            },
            DnsEntry {
                name: "Reviews.Default.svc.cluster.local".into(),
                aliases: vec![],
                addresses: vec!["10.0.0.99".parse().unwrap()],
            },
        ])
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn answer(d: Decision) -> Message {
        match d {
            Decision::Answer(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn resolv_conf() {
        let rc = ResolvConf::parse(
            "# comment\nnameserver 10.96.0.10\nnameserver 127.0.0.1:5353\nsearch default.svc.cluster.local svc.cluster.local cluster.local.\noptions ndots:5\n",
        )
        .unwrap();
        assert_eq!(
            rc.nameservers,
            vec![
                "10.96.0.10:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        assert_eq!(rc.search[2], "cluster.local");
        let e = ResolvConf::parse("nameserver banana").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn answers_names_aliases_and_expansions() {
        let t = table();
        let search = vec!["default.svc.cluster.local".to_string()];
        let a = answer(decide(
            &query("reviews.default.svc.cluster.local.", RecordType::A),
            &t,
            &search,
            Some(512),
        ));
        assert_eq!(a.metadata.id, 7);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(
            &a.answers[0].data,
            &RData::A(A("10.96.10.4".parse().unwrap()))
        );
        let a = answer(decide(
            &query("REVIEWS.", RecordType::AAAA),
            &t,
            &search,
            None,
        ));
        assert_eq!(
            &a.answers[0].data,
            &RData::AAAA(AAAA("fd00::4".parse().unwrap()))
        );
        let a = answer(decide(
            &query("reviews.default.default.svc.cluster.local.", RecordType::A),
            &t,
            &search,
            Some(512),
        ));
        assert_eq!(a.answers.len(), 2);
        assert!(matches!(a.answers[0].data, RData::CNAME(_)));
        assert_eq!(
            decide(&query("ratings.", RecordType::A), &t, &search, Some(512)),
            Decision::Forward
        );
        assert_eq!(
            decide(&query("reviews.", RecordType::MX), &t, &search, Some(512)),
            Decision::Forward
        );
        assert_eq!(
            decide(b"\x00\x01garbage", &t, &search, Some(512)),
            Decision::Drop
        );
        assert_eq!(decide(&[], &t, &search, Some(512)), Decision::Drop);
    }
}
