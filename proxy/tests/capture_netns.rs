//! Proof, with real iptables in network namespaces, that `proxy istio-iptables` captures what it
//! should and nothing else. Each test listens on 15001/15006/15053 itself (the sidecar's ports)
//! and reports the addresses of what arrives.
//!
//! Every test skips (printing why) without root, `ip`, iptables or `setpriv`. Tests run in
//! parallel: each builds its own bridge and pods in namespaces with unique names.

mod support;

use std::net::SocketAddr;

use support::{As, ISTIO_INIT_ARGS, Net, Pod, rules_by_chain, table_block, user_chains};

const CHAINS: &[&str] = &[
    "PREROUTING",
    "INPUT",
    "OUTPUT",
    "POSTROUTING",
    "ISTIO_INBOUND",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
    "ISTIO_OUTPUT_DNS",
    "ISTIO_REDIRECT",
];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    ISTIO_INIT_ARGS.iter().chain(extra).copied().collect()
}

fn orig_dst(addr: SocketAddr) -> Option<Result<SocketAddr, String>> {
    Some(Ok(addr))
}

/// (a) An app in pod A connecting to B:8080 lands on A's 15001, which learns B:8080.
#[test]
fn outbound_connection_lands_on_15001_with_its_original_destination() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.capture(ISTIO_INIT_ARGS);
    let outbound = a.listen_tcp("0.0.0.0:15001");
    let server = b.listen_tcp("0.0.0.0:8080");

    a.send_tcp(As::App, b.at(8080), "app-to-b");
    let got = outbound.expect("app-to-b");
    assert_eq!(got.orig_dst, orig_dst(b.at(8080)));
    assert_eq!(got.client.ip(), a.ip, "REDIRECT keeps the client's address");
    assert!(!server.has_seen("app-to-b"));
}

/// (b) A connection arriving at B:8080 lands on B's 15006, which learns B:8080. The listener is
/// dual-stack (`[::]`), so this also covers an IPv4 client seen as `::ffff:a.b.c.d`.
#[test]
fn inbound_connection_lands_on_15006_with_its_original_destination() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    b.capture(ISTIO_INIT_ARGS);
    let inbound = b.listen_tcp("[::]:15006");
    let app = b.listen_tcp("0.0.0.0:8080");

    a.send_tcp(As::App, b.at(8080), "a-to-b-8080");
    let got = inbound.expect("a-to-b-8080");
    assert_eq!(got.orig_dst, orig_dst(b.at(8080)));
    assert!(
        got.local.is_ipv6(),
        "accepted on the dual-stack socket: {got:?}"
    );
    assert_eq!(got.client.ip().to_canonical(), a.ip);
    assert!(!app.has_seen("a-to-b-8080"));
}

/// (c) The proxy's own traffic (uid 1337, or only gid 1337) is not captured: it reaches B.
#[test]
fn proxy_uid_and_gid_traffic_is_not_captured() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.capture(ISTIO_INIT_ARGS);
    let outbound = a.listen_tcp("0.0.0.0:15001");
    let server = b.listen_tcp("0.0.0.0:8080");

    a.send_tcp(As::Proxy, b.at(8080), "from-proxy");
    a.send_tcp(As::ProxyUser, b.at(8080), "from-proxy-uid");
    a.send_tcp(As::ProxyGroup, b.at(8080), "from-proxy-gid");
    for token in ["from-proxy", "from-proxy-uid", "from-proxy-gid"] {
        assert_eq!(server.expect(token).client.ip(), a.ip);
        assert!(!outbound.has_seen(token));
    }

    // The rules are in force: the app's connection, same destination, is captured.
    a.send_tcp(As::App, b.at(8080), "from-app");
    outbound.expect("from-app");
    assert!(!server.has_seen("from-app"));
}

/// (d) Excluded inbound ports (`-d`, and the tunnel port) are not captured; everything else is.
#[test]
fn excluded_inbound_ports_are_not_captured() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    b.capture(ISTIO_INIT_ARGS);
    let inbound = b.listen_tcp("0.0.0.0:15006");
    let health = b.listen_tcp("0.0.0.0:15021");
    let tunnel = b.listen_tcp("0.0.0.0:15008");

    a.send_tcp(As::App, b.at(15021), "to-health");
    a.send_tcp(As::App, b.at(15008), "to-tunnel");
    a.send_tcp(As::App, b.at(9080), "to-app-port");
    health.expect("to-health");
    tunnel.expect("to-tunnel");
    assert_eq!(inbound.expect("to-app-port").orig_dst, orig_dst(b.at(9080)));
    assert!(!inbound.has_seen("to-health") && !inbound.has_seen("to-tunnel"));
}

/// (d) With `-b <ports>` only those inbound ports are captured.
#[test]
fn only_listed_inbound_ports_are_captured() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    b.capture(&with(&["-b", "8080"]));
    let inbound = b.listen_tcp("0.0.0.0:15006");
    let other = b.listen_tcp("0.0.0.0:9090");

    a.send_tcp(As::App, b.at(8080), "listed");
    a.send_tcp(As::App, b.at(9090), "not-listed");
    assert_eq!(inbound.expect("listed").orig_dst, orig_dst(b.at(8080)));
    other.expect("not-listed");
}

/// (d) An outbound port excluded with `-o` is not captured; other ports are.
#[test]
fn excluded_outbound_port_is_not_captured() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.capture(&with(&["-o", "9090,3306"]));
    let outbound = a.listen_tcp("0.0.0.0:15001");
    let excluded = b.listen_tcp("0.0.0.0:9090");

    a.send_tcp(As::App, b.at(9090), "to-excluded-port");
    a.send_tcp(As::App, b.at(8080), "to-other-port");
    excluded.expect("to-excluded-port");
    assert_eq!(
        outbound.expect("to-other-port").orig_dst,
        orig_dst(b.at(8080))
    );
    assert!(!outbound.has_seen("to-excluded-port"));
}

/// (e) A CIDR excluded with `-x` is not captured; other destinations are.
#[test]
fn excluded_cidr_is_not_captured() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    let excluded = format!("{}/32", b.ip);
    let mut flags = ISTIO_INIT_ARGS.to_vec();
    let x = flags.iter().position(|f| *f == "-x").unwrap();
    flags[x + 1] = &excluded;
    a.capture(&flags);
    let outbound = a.listen_tcp("0.0.0.0:15001");
    let server = b.listen_tcp("0.0.0.0:8080");

    a.send_tcp(As::App, b.at(8080), "to-excluded-cidr");
    server.expect("to-excluded-cidr");
    // Nobody has this address: the connection can only succeed by being captured.
    let elsewhere = SocketAddr::new(net.nobody().into(), 8080);
    a.send_tcp(As::App, elsewhere, "to-elsewhere");
    assert_eq!(
        outbound.expect("to-elsewhere").orig_dst,
        orig_dst(elsewhere)
    );
    assert!(!outbound.has_seen("to-excluded-cidr"));
}

/// (e) With `-i <cidrs>` only those destinations are captured.
#[test]
fn only_included_cidrs_are_captured() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    let included = format!("{}/32", net.nobody());
    let mut flags = ISTIO_INIT_ARGS.to_vec();
    let i = flags.iter().position(|f| *f == "-i").unwrap();
    flags[i + 1] = &included;
    a.capture(&flags);
    let outbound = a.listen_tcp("0.0.0.0:15001");
    let server = b.listen_tcp("0.0.0.0:8080");

    let service = SocketAddr::new(net.nobody().into(), 80);
    a.send_tcp(As::App, service, "to-included");
    a.send_tcp(As::App, b.at(8080), "to-not-included");
    assert_eq!(outbound.expect("to-included").orig_dst, orig_dst(service));
    server.expect("to-not-included");
}

/// (f) DNS over UDP and TCP to the nameserver of the pod's resolv.conf goes to
/// 127.0.0.1:15053; DNS to another server does not (Istio's rule); the proxy's own queries
/// (by uid or by gid) go out.
#[test]
fn dns_to_the_resolv_conf_nameserver_is_redirected_to_15053_except_the_proxys_own() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b, c) = (net.pod(), net.pod(), net.pod());
    a.resolv_conf(&format!(
        "search default.svc.cluster.local\nnameserver {}\n",
        b.ip
    ));
    a.capture(ISTIO_INIT_ARGS);
    let dns_udp = a.listen_udp("127.0.0.1:15053");
    let dns_tcp = a.listen_tcp("127.0.0.1:15053");
    let resolver_udp = b.listen_udp("0.0.0.0:53");
    let resolver_tcp = b.listen_tcp("0.0.0.0:53");
    let other_resolver = c.listen_udp("0.0.0.0:53");

    a.send_udp(As::App, b.at(53), "udp-query");
    a.send_tcp(As::App, b.at(53), "tcp-query");
    assert_eq!(
        dns_udp.expect("udp-query").local,
        "127.0.0.1:15053".parse().unwrap()
    );
    assert_eq!(dns_tcp.expect("tcp-query").orig_dst, orig_dst(b.at(53)));
    a.send_udp(As::App, c.at(53), "to-another-server");
    other_resolver.expect("to-another-server");
    assert!(!dns_udp.has_seen("to-another-server"));

    for (who, name) in [(As::ProxyUser, "uid"), (As::ProxyGroup, "gid")] {
        let (udp, tcp) = (
            format!("proxy-{name}-upstream-udp"),
            format!("proxy-{name}-upstream-tcp"),
        );
        a.send_udp(who, b.at(53), &udp);
        a.send_tcp(who, b.at(53), &tcp);
        resolver_udp.expect(&udp);
        resolver_tcp.expect(&tcp);
        assert!(!dns_udp.has_seen(&udp) && !dns_tcp.has_seen(&tcp));
    }
    assert!(!resolver_udp.has_seen("udp-query"));
}

/// (f) `--capture-all-dns` redirects DNS to any address.
#[test]
fn capture_all_dns_redirects_dns_to_any_address() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.resolv_conf("options ndots:5\n");
    a.capture(&with(&["--capture-all-dns"]));
    let dns_udp = a.listen_udp("127.0.0.1:15053");
    let resolver = b.listen_udp("0.0.0.0:53");
    let anywhere = SocketAddr::new(net.nobody().into(), 53);
    a.send_udp(As::App, anywhere, "to-nobody");
    a.send_udp(As::App, b.at(53), "to-b");
    dns_udp.expect("to-nobody");
    dns_udp.expect("to-b");
    assert!(!resolver.has_seen("to-b"));
}

/// (f) The conntrack zones: the app queries the nameserver from a source port, then the proxy
/// queries it from the same port. Without separate zones the proxy's datagram would match the
/// app's redirected conntrack entry and loop back to 15053; with them it reaches the nameserver.
#[test]
fn the_proxys_query_from_a_port_the_app_just_used_reaches_the_nameserver() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.resolv_conf(&format!("nameserver {}\n", b.ip));
    a.capture(ISTIO_INIT_ARGS);
    let dns = a.listen_udp("127.0.0.1:15053");
    let resolver = b.listen_udp("0.0.0.0:53");

    a.send_udp_from(As::App, 40053, b.at(53), "app-query");
    let got = dns.expect("app-query");
    assert_eq!(got.client.port(), 40053);
    a.send_udp_from(As::Proxy, 40053, b.at(53), "proxy-query");
    let got = resolver.expect("proxy-query");
    assert_eq!(got.client, SocketAddr::new(a.ip.into(), 40053));
    assert!(!dns.has_seen("proxy-query"));
    let raw = a.table("raw", false);
    assert!(
        raw.contains("-j CT --zone 1") && raw.contains("-j CT --zone 2"),
        "{raw}"
    );
}

/// (f) DNS capture is switched off by `--redirect-dns=false`, and by the variable
/// `ISTIO_META_DNS_CAPTURE=false` (Istio's per-pod `proxyMetadata`).
#[test]
fn dns_capture_can_be_turned_off() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.resolv_conf(&format!("nameserver {}\n", b.ip));
    let resolver = b.listen_udp("0.0.0.0:53");
    a.capture(&with(&["--redirect-dns=false"]));
    a.send_udp(As::App, b.at(53), "plain-dns");
    resolver.expect("plain-dns");
    assert!(!a.nat_table(false).contains("ISTIO_OUTPUT_DNS"));
    assert!(!a.table("raw", false).contains("ISTIO"));

    let out = a.istio_iptables_env(ISTIO_INIT_ARGS, &[("ISTIO_META_DNS_CAPTURE", "false")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.send_udp(As::App, b.at(53), "plain-dns-again");
    resolver.expect("plain-dns-again");
    assert!(!a.nat_table(false).contains("ISTIO_OUTPUT_DNS"));

    let out = a.istio_iptables_env(ISTIO_INIT_ARGS, &[("ISTIO_META_DNS_CAPTURE", "maybe")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ISTIO_META_DNS_CAPTURE"));
}

/// TPROXY (`-m TPROXY`): an inbound connection to B:8080 is delivered to B's transparent
/// listener on 15006 with its addresses intact (the client's own IP, B:8080 as the local
/// address), through the policy route `fwmark 1337 → table 133`; the proxy's own outbound
/// traffic and the excluded ports are untouched.
#[test]
fn tproxy_delivers_inbound_connections_with_their_addresses() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    b.resolv_conf("options ndots:5\n");
    b.capture(&with(&["-m", "TPROXY"]));
    let inbound = b.listen_tcp_transparent("0.0.0.0:15006");
    let app = b.listen_tcp("0.0.0.0:8080");
    let health = b.listen_tcp("0.0.0.0:15021");

    a.send_tcp(As::App, b.at(8080), "a-to-b-8080");
    let got = inbound.expect("a-to-b-8080");
    assert_eq!(got.local, b.at(8080), "TPROXY keeps the destination");
    assert_eq!(
        got.client.ip(),
        std::net::IpAddr::V4(a.ip),
        "and the source"
    );
    assert!(!app.has_seen("a-to-b-8080"));
    a.send_tcp(As::App, b.at(15021), "to-health");
    health.expect("to-health");
    assert!(!inbound.has_seen("to-health"));

    let rules = String::from_utf8_lossy(&b.exec(&["ip", "rule", "show"]).stdout).into_owned();
    assert!(rules.contains("fwmark 0x539 lookup 133"), "{rules}");
    let mangle = b.table("mangle", false);
    assert!(mangle.contains("-j TPROXY --on-port 15006"), "{mangle}");
    assert!(
        !b.nat_table(false).contains("-A PREROUTING"),
        "inbound is not NATed"
    );
    // Running again adds no second policy rule.
    b.capture(&with(&["-m", "TPROXY"]));
    let rules = String::from_utf8_lossy(&b.exec(&["ip", "rule", "show"]).stdout).into_owned();
    assert_eq!(rules.matches("lookup 133").count(), 1, "{rules}");
}

/// `-q` captures a port whatever the destination; `-c` leaves an interface alone, in and out;
/// `--drop-invalid` adds its mangle rule.
#[test]
fn excluded_interfaces_and_included_outbound_ports() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    // Capture nothing by destination (-i ""), but port 9000 always (-q).
    let mut flags = ISTIO_INIT_ARGS.to_vec();
    let i = flags.iter().position(|f| *f == "-i").unwrap();
    flags[i + 1] = "";
    flags.extend(["-q", "9000", "--drop-invalid"]);
    a.capture(&flags);
    let outbound = a.listen_tcp("0.0.0.0:15001");
    let server = b.listen_tcp("0.0.0.0:8080");
    let server_9000 = b.listen_tcp("0.0.0.0:9000");
    a.send_tcp(As::App, b.at(9000), "to-9000");
    a.send_tcp(As::App, b.at(8080), "to-8080");
    assert_eq!(outbound.expect("to-9000").orig_dst, orig_dst(b.at(9000)));
    server.expect("to-8080");
    assert!(!server_9000.has_seen("to-9000"));
    assert!(
        a.table("mangle", false)
            .contains("-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP")
    );

    // -c eth0: nothing through eth0 is captured, in or out.
    let (c, d) = (net.pod(), net.pod());
    c.capture(&with(&["-c", "eth0"]));
    let c_inbound = c.listen_tcp("0.0.0.0:15006");
    let c_outbound = c.listen_tcp("0.0.0.0:15001");
    let c_app = c.listen_tcp("0.0.0.0:8080");
    let d_server = d.listen_tcp("0.0.0.0:8080");
    c.send_tcp(As::App, d.at(8080), "c-out");
    d.send_tcp(As::App, c.at(8080), "c-in");
    d_server.expect("c-out");
    c_app.expect("c-in");
    assert!(!c_outbound.has_seen("c-out") && !c_inbound.has_seen("c-in"));
}

fn assert_no_capture_chains(pod: &Pod) {
    for table in ["nat", "mangle", "raw"] {
        let save = pod.table(table, false);
        assert!(
            !save.contains("ISTIO") && !save.contains("0x539"),
            "capture rules left in {} {table}:\n{save}",
            pod.ns.name
        );
    }
}

/// (g) `--cleanup` removes the rules and the chains of every table; traffic flows directly
/// again.
#[test]
fn cleanup_removes_capture() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.resolv_conf(&format!("nameserver {}\n", b.ip));
    a.capture(ISTIO_INIT_ARGS);
    let outbound = a.listen_tcp("0.0.0.0:15001");
    let server = b.listen_tcp("0.0.0.0:8080");
    a.send_tcp(As::App, b.at(8080), "before-cleanup");
    outbound.expect("before-cleanup");

    a.capture(&with(&["--cleanup"]));
    assert_no_capture_chains(&a);
    a.send_tcp(As::App, b.at(8080), "after-cleanup");
    server.expect("after-cleanup");
    assert!(!outbound.has_seen("after-cleanup"));

    // TPROXY, interfaces, invalid drop: all of it goes too.
    a.capture(&with(&["-m", "TPROXY", "-c", "eth9", "--drop-invalid"]));
    assert!(a.table("mangle", false).contains("ISTIO_TPROXY"));
    a.capture(&with(&["--cleanup"]));
    assert_no_capture_chains(&a);

    // Nothing left to remove is not an error; `--remove` and Istio's `--cleanup-only` are the
    // same flag.
    a.capture(&["--cleanup"]);
    a.capture(&["--remove"]);
    a.capture(&["--cleanup-only"]);
    assert_no_capture_chains(&a);
}

/// `--cleanup --dry-run` shows what it would remove and removes nothing.
#[test]
fn cleanup_dry_run_removes_nothing() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let a = net.pod();
    a.capture(ISTIO_INIT_ARGS);
    let before = a.nat_table(false);
    let out = a.istio_iptables(&["--cleanup", "--dry-run"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        printed.contains("-D OUTPUT -j ISTIO_OUTPUT") && printed.contains("-X ISTIO_OUTPUT"),
        "{printed}"
    );
    assert_eq!(
        rules_by_chain(&a.nat_table(false), CHAINS),
        rules_by_chain(&before, CHAINS)
    );
}

/// The tables read back with iptables-save are exactly the dry-run document; running again,
/// even with other flags (another mode, tables used or not), replaces the rules instead of
/// adding to them.
#[test]
fn applied_rules_read_back_as_dry_run_and_rerunning_replaces_them() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let a = net.pod();
    a.resolv_conf("nameserver 10.96.0.10\n");
    let dry_run = |flags: &[&str]| {
        let mut flags = flags.to_vec();
        flags.extend(["--dry-run", "--ipv6=never"]);
        let out = a.istio_iptables(&flags);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let check = |flags: &[&str]| {
        let expected = dry_run(flags);
        for table in ["mangle", "nat", "raw"] {
            let save = table_block(&a.table(table, false), table);
            let want = table_block(&expected, table);
            assert_eq!(
                rules_by_chain(&save, CHAINS_OF_ALL_TABLES),
                rules_by_chain(&want, CHAINS_OF_ALL_TABLES),
                "{flags:?} {table}"
            );
            let mut ours: Vec<String> = user_chains(&save);
            ours.retain(|c| c.starts_with("ISTIO"));
            assert_eq!(ours, user_chains(&want), "{flags:?} {table}");
        }
    };

    a.capture(ISTIO_INIT_ARGS);
    a.capture(ISTIO_INIT_ARGS);
    check(ISTIO_INIT_ARGS);
    assert_eq!(user_chains(&a.nat_table(false)).len(), 5);

    let other = with(&[
        "--redirect-dns=false",
        "-o",
        "3306,3307",
        "-b",
        "80,443",
        "-x",
        "10.0.0.0/8",
        "-m",
        "TPROXY",
        "-c",
        "eth9",
        "-k",
        "vm0",
        "--drop-invalid",
    ]);
    a.capture(&other);
    check(&other);
    assert!(!a.table("raw", false).contains("ISTIO"));
    // And back: the mangle rules of TPROXY go.
    a.capture(ISTIO_INIT_ARGS);
    check(ISTIO_INIT_ARGS);
    assert!(!a.table("mangle", false).contains("ISTIO"));
}

const CHAINS_OF_ALL_TABLES: &[&str] = &[
    "PREROUTING",
    "INPUT",
    "FORWARD",
    "OUTPUT",
    "POSTROUTING",
    "ISTIO_DIVERT",
    "ISTIO_DROP",
    "ISTIO_INBOUND",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
    "ISTIO_OUTPUT_DNS",
    "ISTIO_REDIRECT",
    "ISTIO_TPROXY",
];

/// A bad flag or variable exits non-zero, names it, and applies nothing.
#[test]
fn bad_flag_applies_nothing() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let a = net.pod();
    for bad in [
        &["-p", "99999"][..],
        &["-x", "10.0.0.0/40"],
        &["-m", "tproxy"],
        &["-b", "http"],
        &["-c", "not/a/nic"],
        &["--cni-mode"],
    ] {
        let out = a.istio_iptables(bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(bad[0]), "{bad:?}: {stderr}");
        assert_no_capture_chains(&a);
    }
    for (name, value) in [
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.1/8"),
        ("ISTIO_SERVICE_CIDR", "10.0.0.0/99"),
        ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "no-such-group-here"),
        ("NATIVE_NFTABLES", "true"),
    ] {
        let out = a.istio_iptables_env(&[], &[(name, value)]);
        assert!(!out.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let named = stderr.contains(name)
            || (name == "ISTIO_SERVICE_CIDR" && stderr.contains("-i/--istio-service-cidr"));
        assert!(named, "{name}={value}: {stderr}");
        assert_no_capture_chains(&a);
    }
}

/// IPv6: with an IPv6 address the pod gets ip6tables rules too (`--ipv6=auto`), `::6` on `lo`,
/// and `original_dst()` works for IPv6 connections (`IP6T_SO_ORIGINAL_DST`).
#[test]
fn ipv6_is_captured_when_the_pod_has_ipv6() {
    if support::skip() {
        return;
    }
    if support::which("ip6tables-restore").is_none() {
        eprintln!("skipping: ip6tables-restore is not installed");
        return;
    }
    let mut net = Net::dual_stack();
    let (a, b) = (net.pod(), net.pod());
    a.capture(ISTIO_INIT_ARGS);

    let save6 = a.nat_table(true);
    let dry = String::from_utf8_lossy(&a.istio_iptables(&["--dry-run"]).stdout).into_owned();
    let v6_doc = table_block(&dry[dry.find("# IPv6").unwrap()..], "nat");
    assert_eq!(
        rules_by_chain(&save6, CHAINS),
        rules_by_chain(&v6_doc, CHAINS)
    );
    let lo = a.exec(&["ip", "-6", "addr", "show", "dev", "lo"]);
    assert!(String::from_utf8_lossy(&lo.stdout).contains("::6/128"));

    let outbound = a.listen_tcp("[::]:15001");
    let server = b.listen_tcp("[::]:8080");
    a.send_tcp(As::App, b.at6(8080), "over-ipv6");
    a.send_tcp(As::App, b.at(8080), "over-ipv4");
    assert_eq!(outbound.expect("over-ipv6").orig_dst, orig_dst(b.at6(8080)));
    assert_eq!(outbound.expect("over-ipv4").orig_dst, orig_dst(b.at(8080)));
    a.send_tcp(As::Proxy, b.at6(8080), "proxy-over-ipv6");
    server.expect("proxy-over-ipv6");

    a.capture(&["--cleanup"]);
    assert!(!a.nat_table(true).contains("ISTIO"));
}
