//! Proof, with real iptables in network namespaces, that `proxy istio-iptables` captures what it
//! should and nothing else. The sidecar's listeners are not written yet: each test listens on
//! 15001/15006/15053 itself and reports `original_dst()` of what arrives.
//!
//! Every test skips (printing why) without root, `ip`, iptables or `setpriv`. Tests run in
//! parallel: each builds its own bridge and pods in namespaces with unique names.

mod support;

use std::net::SocketAddr;

use support::{As, ISTIO_INIT_ARGS, Net, Pod, rules_by_chain, user_chains};

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

/// (f) DNS over UDP and TCP to any address goes to 127.0.0.1:15053; the proxy's own doesn't.
#[test]
fn dns_is_redirected_to_15053_except_the_proxys_own() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.capture(ISTIO_INIT_ARGS);
    let dns_udp = a.listen_udp("127.0.0.1:15053");
    let dns_tcp = a.listen_tcp("127.0.0.1:15053");
    let resolver_udp = b.listen_udp("0.0.0.0:53");
    let resolver_tcp = b.listen_tcp("0.0.0.0:53");

    let anywhere = SocketAddr::new(net.nobody().into(), 53);
    a.send_udp(As::App, anywhere, "udp-query");
    a.send_tcp(As::App, anywhere, "tcp-query");
    a.send_udp(As::App, b.at(53), "udp-query-to-b");
    assert_eq!(
        dns_udp.expect("udp-query").local,
        "127.0.0.1:15053".parse().unwrap()
    );
    assert_eq!(dns_tcp.expect("tcp-query").orig_dst, orig_dst(anywhere));
    dns_udp.expect("udp-query-to-b");

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
    assert!(!resolver_udp.has_seen("udp-query-to-b"));
}

/// (f) `--redirect-dns=false` leaves DNS alone.
#[test]
fn dns_capture_can_be_turned_off() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
    a.capture(&with(&["--redirect-dns=false"]));
    let resolver = b.listen_udp("0.0.0.0:53");
    a.send_udp(As::App, b.at(53), "plain-dns");
    resolver.expect("plain-dns");
    assert!(!a.nat_table(false).contains("ISTIO_OUTPUT_DNS"));
}

fn assert_no_capture_chains(pod: &Pod) {
    let save = pod.nat_table(false);
    assert!(
        !save.contains("ISTIO"),
        "capture rules left in {}:\n{save}",
        pod.ns.name
    );
}

/// (g) `--cleanup` removes the jumps and the chains; traffic flows directly again.
#[test]
fn cleanup_removes_capture() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let (a, b) = (net.pod(), net.pod());
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

    // Nothing left to remove is not an error; `--remove` is the same flag.
    a.capture(&["--cleanup"]);
    a.capture(&["--remove"]);
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
        printed.contains("-D OUTPUT -p tcp -j ISTIO_OUTPUT") && printed.contains("-X ISTIO_OUTPUT"),
        "{printed}"
    );
    assert_eq!(
        rules_by_chain(&a.nat_table(false), CHAINS),
        rules_by_chain(&before, CHAINS)
    );
}

/// The table read back with iptables-save is exactly the dry-run document; running again, even
/// with other flags, replaces the rules instead of adding to them.
#[test]
fn applied_rules_read_back_as_dry_run_and_rerunning_replaces_them() {
    if support::skip() {
        return;
    }
    let mut net = Net::new();
    let a = net.pod();
    let dry_run = |flags: &[&str]| {
        let mut flags = flags.to_vec();
        flags.extend(["--dry-run", "--ipv6=never"]);
        let out = a.istio_iptables(&flags);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    a.capture(ISTIO_INIT_ARGS);
    a.capture(ISTIO_INIT_ARGS);
    let save = a.nat_table(false);
    let expected = dry_run(ISTIO_INIT_ARGS);
    assert_eq!(
        rules_by_chain(&save, CHAINS),
        rules_by_chain(&expected, CHAINS)
    );
    assert_eq!(user_chains(&save).len(), 5, "{save}");

    let other = with(&[
        "--redirect-dns=false",
        "-o",
        "3306",
        "-b",
        "80,443",
        "-x",
        "10.0.0.0/8",
    ]);
    a.capture(&other);
    let save = a.nat_table(false);
    assert_eq!(
        rules_by_chain(&save, CHAINS),
        rules_by_chain(&dry_run(&other), CHAINS)
    );
    assert!(
        !user_chains(&save).contains(&"ISTIO_OUTPUT_DNS".to_string()),
        "{save}"
    );
}

/// A bad flag exits non-zero, names the flag, and applies nothing.
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
        &["-m", "TPROXY"],
        &["-b", "http"],
    ] {
        let out = a.istio_iptables(bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(bad[0]), "{bad:?}: {stderr}");
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
    let v6_doc = &dry[dry.rfind("*nat").unwrap()..];
    assert_eq!(
        rules_by_chain(&save6, CHAINS),
        rules_by_chain(v6_doc, CHAINS)
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
