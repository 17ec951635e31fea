//! The nat table the capture step installs, generated from a [`CaptureConfig`].
//!
//! Rules are written in the canonical form `iptables-save` prints (`-p tcp -m tcp --dport`, the
//! order of matches iptables uses), so that what is applied reads back identically. For Istio's
//! injected arguments the result is exactly the rule set Istio's `istio-iptables` writes, plus the
//! DNS capture rules (the chain `ISTIO_OUTPUT_DNS`, see [`nat_table`]).

use std::fmt::Write as _;

use ipnet::IpNet;
use rustmesh_xds::well_known::{INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6};

use super::config::{CaptureConfig, InboundCapture, OutboundCapture};

/// Inbound TCP is sent here from `PREROUTING`.
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
/// Redirects to the inbound capture port.
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
/// Outbound TCP is sent here from `OUTPUT`.
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
/// DNS (UDP and TCP port 53) is sent here from `OUTPUT` when DNS capture is on.
pub const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
/// Redirects to the outbound capture port.
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";

/// Every chain the capture step may create in the nat table, in the order `iptables-save` lists
/// them. Cleanup removes exactly these (and the jumps to them).
pub const OWNED_CHAINS: [&str; 5] = [
    ISTIO_INBOUND,
    ISTIO_IN_REDIRECT,
    ISTIO_OUTPUT,
    ISTIO_OUTPUT_DNS,
    ISTIO_REDIRECT,
];

/// The nat table's built-in chains, in the order `iptables-save` lists their rules.
pub const BUILTIN_CHAINS: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

const DNS: u16 = 53;

/// IPv4 (iptables) or IPv6 (ip6tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The restore program on `PATH`.
    pub fn restore_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The save program on `PATH`.
    pub fn save_program(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    /// `IPv4` or `IPv6`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// Source of the proxy's inbound passthrough connections (`127.0.0.6/32`, `::6/128`).
    fn passthrough_source(self) -> String {
        match self {
            Family::V4 => format!("{INBOUND_PASSTHROUGH_SOURCE_V4}/32"),
            Family::V6 => format!("{INBOUND_PASSTHROUGH_SOURCE_V6}/128"),
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// One rule: `-A <chain> <spec>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain it is appended to.
    pub chain: &'static str,
    /// Matches and target, as `iptables-save` prints them.
    pub spec: String,
}

impl Rule {
    /// `-A <chain> <spec>`.
    pub fn to_append(&self) -> String {
        format!("-A {} {}", self.chain, self.spec)
    }
}

/// The capture step's part of the nat table of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatTable {
    /// The family the addresses in the rules belong to.
    pub family: Family,
    /// The chains to create (or flush, when they exist), in `iptables-save` order.
    pub chains: Vec<&'static str>,
    /// The rules, in the order they are appended to their chain.
    pub rules: Vec<Rule>,
}

impl NatTable {
    fn push(&mut self, chain: &'static str, spec: impl Into<String>) {
        self.rules.push(Rule {
            chain,
            spec: spec.into(),
        });
    }

    /// The rules grouped by chain, built-in chains first then [`NatTable::chains`]: the order in
    /// which `iptables-save` prints them, and so the order of the restore document.
    pub fn ordered_rules(&self) -> Vec<&Rule> {
        BUILTIN_CHAINS
            .iter()
            .chain(self.chains.iter())
            .flat_map(|chain| self.rules.iter().filter(move |rule| rule.chain == *chain))
            .collect()
    }

    /// `:CHAIN - [0:0]` lines: with `--noflush` these create the chain, or flush it if it exists.
    pub fn chain_declarations(&self) -> Vec<String> {
        self.chains
            .iter()
            .map(|chain| format!(":{chain} - [0:0]"))
            .collect()
    }

    /// The table as an `iptables-restore --noflush` document (what `--dry-run` prints).
    pub fn render(&self) -> String {
        self.render_with(&[])
    }

    /// The document with `commands` (e.g. `-D`/`-F`/`-X` of a previous run) between the chain
    /// declarations and the rules, all in one transaction.
    pub fn render_with(&self, commands: &[String]) -> String {
        let mut doc = String::from("*nat\n");
        for line in self.chain_declarations().iter().chain(commands) {
            let _ = writeln!(doc, "{line}");
        }
        for rule in self.ordered_rules() {
            let _ = writeln!(doc, "{}", rule.to_append());
        }
        doc.push_str("COMMIT\n");
        doc
    }
}

/// Generates the nat table for `family`.
///
/// The order follows Istio's `istio-iptables`:
///
/// * `PREROUTING -p tcp -j ISTIO_INBOUND` (only when some inbound port is captured);
///   `ISTIO_INBOUND` returns the tunnel port, then the excluded ports (`-d`), then sends the rest
///   (or only the `-b` ports) to `ISTIO_IN_REDIRECT`, which redirects to the inbound port (`-z`).
/// * `OUTPUT -p tcp -j ISTIO_OUTPUT`; `ISTIO_OUTPUT` returns excluded outbound ports (`-o`), the
///   inbound passthrough source on `lo`, then for each proxy uid and gid: the proxy calling the
///   pod's own IP over `lo` goes to `ISTIO_IN_REDIRECT`, the app's other `lo` traffic returns, the
///   proxy's traffic returns; then localhost and excluded CIDRs (`-x`) return and the rest (or only
///   the `-i` CIDRs) goes to `ISTIO_REDIRECT`, which redirects to the outbound port (`-p`).
/// * DNS capture (`--redirect-dns`, on by default): `OUTPUT` sends UDP and TCP port 53 to
///   `ISTIO_OUTPUT_DNS` before `ISTIO_OUTPUT` sees it; that chain returns the proxy's uids and gids
///   (the proxy's own upstream queries) and redirects everything else to the DNS port (15053) on
///   localhost. A separate chain leaves Istio's `ISTIO_OUTPUT` rules unchanged and lets the UDP
///   jump stay narrow (Istio's `OUTPUT -p tcp` jump never sees UDP). Excluding port 53 with `-o`
///   leaves DNS uncaptured, as it does in Istio.
pub fn nat_table(cfg: &CaptureConfig, family: Family) -> NatTable {
    // Excluding port 53 with `-o` excludes DNS from capture too, as in Istio.
    let redirect_dns = cfg.redirect_dns && !cfg.outbound_exclude_ports.contains(&DNS);
    let mut chains = vec![ISTIO_INBOUND, ISTIO_IN_REDIRECT, ISTIO_OUTPUT];
    if redirect_dns {
        chains.push(ISTIO_OUTPUT_DNS);
    }
    chains.push(ISTIO_REDIRECT);
    let mut t = NatTable {
        family,
        chains,
        rules: Vec::new(),
    };
    let loopback = family.loopback();

    // Inbound.
    let captures_inbound = match &cfg.inbound {
        InboundCapture::All => true,
        InboundCapture::Ports(ports) => !ports.is_empty(),
    };
    if captures_inbound {
        t.push("PREROUTING", format!("-p tcp -j {ISTIO_INBOUND}"));
    }
    t.push(
        ISTIO_INBOUND,
        format!("-p tcp -m tcp --dport {} -j RETURN", cfg.tunnel_port),
    );
    match &cfg.inbound {
        InboundCapture::All => {
            for port in &cfg.inbound_exclude_ports {
                t.push(
                    ISTIO_INBOUND,
                    format!("-p tcp -m tcp --dport {port} -j RETURN"),
                );
            }
            t.push(ISTIO_INBOUND, format!("-p tcp -j {ISTIO_IN_REDIRECT}"));
        }
        InboundCapture::Ports(ports) => {
            for port in ports {
                t.push(
                    ISTIO_INBOUND,
                    format!("-p tcp -m tcp --dport {port} -j {ISTIO_IN_REDIRECT}"),
                );
            }
        }
    }
    t.push(
        ISTIO_IN_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.inbound_port),
    );

    // DNS, ahead of the TCP jump so that TCP port 53 reaches it.
    if redirect_dns {
        t.push(
            "OUTPUT",
            format!("-p udp -m udp --dport {DNS} -j {ISTIO_OUTPUT_DNS}"),
        );
        t.push(
            "OUTPUT",
            format!("-p tcp -m tcp --dport {DNS} -j {ISTIO_OUTPUT_DNS}"),
        );
        for uid in &cfg.proxy_uids {
            t.push(
                ISTIO_OUTPUT_DNS,
                format!("-m owner --uid-owner {uid} -j RETURN"),
            );
        }
        for gid in &cfg.proxy_gids {
            t.push(
                ISTIO_OUTPUT_DNS,
                format!("-m owner --gid-owner {gid} -j RETURN"),
            );
        }
        for proto in ["udp", "tcp"] {
            t.push(
                ISTIO_OUTPUT_DNS,
                format!(
                    "-p {proto} -m {proto} --dport {DNS} -j REDIRECT --to-ports {}",
                    cfg.dns_port
                ),
            );
        }
    }

    // Outbound.
    t.push("OUTPUT", format!("-p tcp -j {ISTIO_OUTPUT}"));
    for port in &cfg.outbound_exclude_ports {
        t.push(
            ISTIO_OUTPUT,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        );
    }
    t.push(
        ISTIO_OUTPUT,
        format!("-s {} -o lo -j RETURN", family.passthrough_source()),
    );
    // If the user asked to capture a loopback range, the app's own lo traffic must not return.
    let captures_loopback = match &cfg.outbound {
        OutboundCapture::All => false,
        OutboundCapture::Cidrs(cidrs) => cidrs
            .iter()
            .any(|net| family.contains(net) && net.network().is_loopback()),
    };
    let owners = cfg
        .proxy_uids
        .iter()
        .map(|uid| ("--uid-owner", uid))
        .chain(cfg.proxy_gids.iter().map(|gid| ("--gid-owner", gid)));
    for (owner, id) in owners {
        t.push(
            ISTIO_OUTPUT,
            format!(
                "! -d {loopback} -o lo -p tcp -m tcp ! --dport {} -m owner {owner} {id} -j {ISTIO_IN_REDIRECT}",
                cfg.tunnel_port
            ),
        );
        if !captures_loopback {
            t.push(
                ISTIO_OUTPUT,
                format!("-o lo -m owner ! {owner} {id} -j RETURN"),
            );
        }
        t.push(ISTIO_OUTPUT, format!("-m owner {owner} {id} -j RETURN"));
    }
    t.push(ISTIO_OUTPUT, format!("-d {loopback} -j RETURN"));
    for net in cfg
        .outbound_exclude_cidrs
        .iter()
        .filter(|net| family.contains(net))
    {
        t.push(ISTIO_OUTPUT, format!("-d {net} -j RETURN"));
    }
    match &cfg.outbound {
        OutboundCapture::All => t.push(ISTIO_OUTPUT, format!("-j {ISTIO_REDIRECT}")),
        OutboundCapture::Cidrs(cidrs) => {
            let mut any = false;
            for net in cidrs.iter().filter(|net| family.contains(net)) {
                t.push(ISTIO_OUTPUT, format!("-d {net} -j {ISTIO_REDIRECT}"));
                any = true;
            }
            if any {
                // Explicit, though the end of the chain would return too.
                t.push(ISTIO_OUTPUT, "-j RETURN");
            }
        }
    }
    t.push(
        ISTIO_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.outbound_port),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::config::IstioIptablesArgs;

    fn config(f: impl FnOnce(&mut IstioIptablesArgs)) -> CaptureConfig {
        let mut args = IstioIptablesArgs::default();
        f(&mut args);
        CaptureConfig::try_from(&args).unwrap()
    }

    fn lines(table: &NatTable) -> Vec<String> {
        table
            .ordered_rules()
            .iter()
            .map(|r| r.to_append())
            .collect()
    }

    /// The seed's `*nat` rules (Istio with its injected arguments, DNS capture off).
    const ISTIO_DEFAULT: &[&str] = &[
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ];

    #[test]
    fn without_dns_the_defaults_are_exactly_istios_rules() {
        let table = nat_table(&config(|a| a.redirect_dns = false), Family::V4);
        assert_eq!(lines(&table), ISTIO_DEFAULT);
        assert_eq!(
            table.chains,
            [
                "ISTIO_INBOUND",
                "ISTIO_IN_REDIRECT",
                "ISTIO_OUTPUT",
                "ISTIO_REDIRECT"
            ]
        );
    }

    #[test]
    fn dns_rules_are_added_without_changing_istios_rules() {
        let table = nat_table(&CaptureConfig::default(), Family::V4);
        let all = lines(&table);
        let (dns, rest): (Vec<_>, Vec<_>) = all
            .iter()
            .cloned()
            .partition(|l| l.contains(ISTIO_OUTPUT_DNS));
        assert_eq!(rest, ISTIO_DEFAULT);
        assert_eq!(
            dns,
            [
                "-A OUTPUT -p udp -m udp --dport 53 -j ISTIO_OUTPUT_DNS",
                "-A OUTPUT -p tcp -m tcp --dport 53 -j ISTIO_OUTPUT_DNS",
                "-A ISTIO_OUTPUT_DNS -m owner --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT_DNS -m owner --gid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT_DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
                "-A ISTIO_OUTPUT_DNS -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
            ]
        );
        // The DNS jumps come before the TCP jump, or TCP port 53 would go to 15001.
        let tcp_jump = all
            .iter()
            .position(|l| l == "-A OUTPUT -p tcp -j ISTIO_OUTPUT")
            .unwrap();
        let dns_jump = all
            .iter()
            .position(|l| l.starts_with("-A OUTPUT -p tcp -m tcp --dport 53"))
            .unwrap();
        assert!(dns_jump < tcp_jump);
        assert_eq!(table.chains[3], ISTIO_OUTPUT_DNS);
    }

    #[test]
    fn ipv6_uses_ipv6_loopback_and_passthrough_source() {
        let table = nat_table(&config(|a| a.redirect_dns = false), Family::V6);
        let v6 = lines(&table);
        let expected: Vec<String> = ISTIO_DEFAULT
            .iter()
            .map(|l| {
                l.replace("127.0.0.6/32", "::6/128")
                    .replace("127.0.0.1/32", "::1/128")
            })
            .collect();
        assert_eq!(v6, expected);
    }

    #[test]
    fn specific_outbound_cidrs_redirect_only_those_then_return() {
        let table = nat_table(
            &config(|a| a.outbound_cidrs = "10.96.0.0/12,192.168.0.0/16,fd00::/8".into()),
            Family::V4,
        );
        let all = lines(&table);
        let output: Vec<_> = all
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_OUTPUT "))
            .collect();
        let tail = &output[output.len() - 4..];
        assert_eq!(
            tail,
            [
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -d 192.168.0.0/16 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -j RETURN",
            ]
        );
        assert!(!all.contains(&"-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_string()));
        let v6 = lines(&nat_table(
            &config(|a| a.outbound_cidrs = "10.96.0.0/12,fd00::/8".into()),
            Family::V6,
        ));
        assert!(v6.contains(&"-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT".to_string()));
        assert!(!v6.iter().any(|l| l.contains("10.96.0.0/12")));
    }

    #[test]
    fn no_outbound_cidrs_capture_no_outbound() {
        let all = lines(&nat_table(
            &config(|a| a.outbound_cidrs = "".into()),
            Family::V4,
        ));
        assert!(
            !all.iter()
                .any(|l| l.starts_with("-A ISTIO_OUTPUT") && l.ends_with("-j ISTIO_REDIRECT"))
        );
        assert!(!all.contains(&"-A ISTIO_OUTPUT -j RETURN".to_string()));
    }

    #[test]
    fn excluded_cidrs_return_before_the_redirect() {
        let all = lines(&nat_table(
            &config(|a| a.outbound_exclude_cidrs = "10.0.0.0/8,169.254.169.254".into()),
            Family::V4,
        ));
        let at = |line: &str| {
            all.iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("{line} missing: {all:#?}"))
        };
        let redirect = at("-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
        assert!(
            at("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
                < at("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN")
        );
        assert!(at("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN") < redirect);
        assert!(at("-A ISTIO_OUTPUT -d 169.254.169.254/32 -j RETURN") < redirect);
    }

    #[test]
    fn excluding_port_53_leaves_dns_alone() {
        let table = nat_table(
            &config(|a| a.outbound_exclude_ports = "53".into()),
            Family::V4,
        );
        assert!(!table.chains.contains(&ISTIO_OUTPUT_DNS));
        let all = lines(&table);
        assert!(
            !all.iter().any(|l| l.contains(ISTIO_OUTPUT_DNS)),
            "{all:#?}"
        );
        assert!(all.contains(&"-A ISTIO_OUTPUT -p tcp -m tcp --dport 53 -j RETURN".to_string()));
    }

    #[test]
    fn excluded_outbound_ports_return_first() {
        let all = lines(&nat_table(
            &config(|a| a.outbound_exclude_ports = "3306,6379".into()),
            Family::V4,
        ));
        let output: Vec<_> = all
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_OUTPUT "))
            .take(3)
            .collect();
        assert_eq!(
            output,
            [
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN",
                "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
            ]
        );
    }

    #[test]
    fn inbound_port_list_redirects_only_those_ports() {
        let all = lines(&nat_table(
            &config(|a| a.inbound_ports = "80,8080".into()),
            Family::V4,
        ));
        let inbound: Vec<_> = all
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_INBOUND "))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
            ]
        );
        assert!(all.contains(&"-A PREROUTING -p tcp -j ISTIO_INBOUND".to_string()));
    }

    #[test]
    fn empty_inbound_ports_capture_no_inbound() {
        let all = lines(&nat_table(
            &config(|a| a.inbound_ports = "".into()),
            Family::V4,
        ));
        assert!(!all.iter().any(|l| l.starts_with("-A PREROUTING")));
        assert!(
            !all.iter()
                .any(|l| l.starts_with("-A ISTIO_INBOUND") && l.ends_with(ISTIO_IN_REDIRECT))
        );
    }

    #[test]
    fn ports_and_ids_are_taken_from_the_flags() {
        let all = lines(&nat_table(
            &config(|a| {
                a.envoy_port = "16001".into();
                a.inbound_capture_port = "16006".into();
                a.inbound_tunnel_port = "16008".into();
                a.proxy_uid = "1000,1001".into();
                a.proxy_gid = Some("2000".into());
            }),
            Family::V4,
        ));
        assert!(all.contains(&"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001".to_string()));
        assert!(
            all.contains(&"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006".to_string())
        );
        assert!(
            all.contains(&"-A ISTIO_INBOUND -p tcp -m tcp --dport 16008 -j RETURN".to_string())
        );
        for owner in ["--uid-owner 1000", "--uid-owner 1001", "--gid-owner 2000"] {
            assert_eq!(
                all.iter().filter(|l| l.contains(owner)).count(),
                4,
                "{owner}: {all:#?}"
            );
        }
        assert!(!all.iter().any(|l| l.contains("1337")));
    }

    #[test]
    fn capturing_a_loopback_range_keeps_the_apps_lo_traffic() {
        let all = lines(&nat_table(
            &config(|a| a.outbound_cidrs = "127.0.0.0/8".into()),
            Family::V4,
        ));
        assert!(
            !all.iter()
                .any(|l| l.starts_with("-A ISTIO_OUTPUT -o lo -m owner !"))
        );
    }

    #[test]
    fn rendered_document_declares_chains_then_rules() {
        let doc = nat_table(&CaptureConfig::default(), Family::V4)
            .render_with(&["-D OUTPUT -p tcp -j ISTIO_OUTPUT".to_string()]);
        let lines: Vec<&str> = doc.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":ISTIO_INBOUND - [0:0]");
        assert_eq!(lines[6], "-D OUTPUT -p tcp -j ISTIO_OUTPUT");
        assert_eq!(lines[7], "-A PREROUTING -p tcp -j ISTIO_INBOUND");
        assert_eq!(*lines.last().unwrap(), "COMMIT");
    }
}
