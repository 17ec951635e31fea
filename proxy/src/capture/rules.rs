//! The tables the capture step installs, generated from a [`CaptureConfig`].
//!
//! Rules are written in the canonical form `iptables-save` prints (`-p tcp -m tcp --dport`, the
//! order of matches iptables uses, marks in hex), so that what is applied reads back identically.
//! The rule set is Istio's `istio-iptables` (the generation of Istio 1.24 and later, one rule per
//! port): the nat table for REDIRECT capture, mangle for TPROXY and `--drop-invalid`, and raw for
//! the conntrack zones of DNS capture. [`tables`] documents the order.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use rustmesh_xds::well_known::{INBOUND_PASSTHROUGH_SOURCE_V4, INBOUND_PASSTHROUGH_SOURCE_V6};

use super::config::{
    CaptureConfig, InboundCapture, InterceptionMode, OutboundCapture, OwnerGroups,
};

/// Inbound TCP is sent here from `PREROUTING` (nat; mangle in TPROXY mode; raw for DNS replies).
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
/// Redirects to the inbound capture port.
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
/// Outbound traffic is sent here from `OUTPUT`.
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
/// DNS redirection (nat) and conntrack zones (raw).
pub const ISTIO_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
/// Redirects to the outbound capture port.
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
/// TPROXY: marks packets of intercepted connections and accepts them.
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
/// TPROXY: sends new inbound connections to the inbound capture port.
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";
/// `--drop-invalid`: drops what conntrack finds INVALID.
pub const ISTIO_DROP: &str = "ISTIO_DROP";

/// The mark TPROXY mode sets on the proxy's own loopback connections to the app
/// (Istio's `OutboundMark`).
pub const OUTBOUND_MARK: u32 = 1338;

const DNS: u16 = 53;

/// A netfilter table the capture step writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableName {
    /// `mangle`: TPROXY and `--drop-invalid`.
    Mangle,
    /// `nat`: REDIRECT capture.
    Nat,
    /// `raw`: conntrack zones for DNS capture.
    Raw,
}

impl TableName {
    /// The three tables, in the order of the restore document.
    pub const ALL: [TableName; 3] = [TableName::Mangle, TableName::Nat, TableName::Raw];

    /// `mangle`, `nat`, `raw`.
    pub fn name(self) -> &'static str {
        match self {
            TableName::Mangle => "mangle",
            TableName::Nat => "nat",
            TableName::Raw => "raw",
        }
    }

    /// The built-in chains, in the order `iptables-save` lists their rules.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            TableName::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            TableName::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            TableName::Raw => &["PREROUTING", "OUTPUT"],
        }
    }

    /// Every chain the capture step may create here, in the order `iptables-save` lists them
    /// (alphabetical). Cleanup removes exactly these and the rules that lead to them.
    pub fn owned_chains(self) -> &'static [&'static str] {
        match self {
            TableName::Mangle => &[ISTIO_DIVERT, ISTIO_DROP, ISTIO_INBOUND, ISTIO_TPROXY],
            TableName::Nat => &[
                ISTIO_INBOUND,
                ISTIO_IN_REDIRECT,
                ISTIO_OUTPUT,
                ISTIO_OUTPUT_DNS,
                ISTIO_REDIRECT,
            ],
            TableName::Raw => &[ISTIO_INBOUND, ISTIO_OUTPUT_DNS],
        }
    }
}

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

    /// Source of the proxy's inbound passthrough connections (`127.0.0.6/32`, `::6/128`).
    fn passthrough_source(self) -> String {
        match self {
            Family::V4 => format!("{INBOUND_PASSTHROUGH_SOURCE_V4}/32"),
            Family::V6 => format!("{INBOUND_PASSTHROUGH_SOURCE_V6}/128"),
        }
    }

    /// The address TPROXY's `--on-ip` prints as.
    fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0",
            Family::V6 => "::",
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    fn contains_ip(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    fn host(self, ip: &IpAddr) -> String {
        match self {
            Family::V4 => format!("{ip}/32"),
            Family::V6 => format!("{}/128", addr_text(ip)),
        }
    }
}

/// An address as iptables prints it. IPv6 follows `inet_ntop`, which writes an address whose
/// first 96 bits are zero (and the next 16 not) with a dotted IPv4 tail (`::127.0.0.53`), where
/// Rust writes `::7f00:35`.
pub fn addr_text(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..6] == [0; 6] && s[6] != 0 {
                let [.., a, b, c, d] = v6.octets();
                format!("::{a}.{b}.{c}.{d}")
            } else {
                v6.to_string()
            }
        }
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// A range as iptables prints it (see [`addr_text`]).
pub fn net_text(net: &IpNet) -> String {
    format!("{}/{}", addr_text(&net.addr()), net.prefix_len())
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

    /// The chain this rule jumps to (`-j X`), if any: the word after the last `-j`.
    pub fn target(&self) -> Option<&str> {
        let after = match self.spec.rfind(" -j ") {
            Some(at) => &self.spec[at + 4..],
            None => self.spec.strip_prefix("-j ")?,
        };
        after.split_whitespace().next()
    }
}

/// The capture step's part of one table of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Which table.
    pub name: TableName,
    /// The rules, in the order they end up in their chain.
    pub rules: Vec<Rule>,
}

impl Table {
    fn new(name: TableName) -> Self {
        Self {
            name,
            rules: Vec::new(),
        }
    }

    fn push(&mut self, chain: &'static str, spec: impl Into<String>) {
        self.rules.push(Rule {
            chain,
            spec: spec.into(),
        });
    }

    /// `-I <chain> <position>`: before the `position`-th (1-based) rule of `chain`.
    fn insert(&mut self, chain: &'static str, position: usize, spec: impl Into<String>) {
        let rule = Rule {
            chain,
            spec: spec.into(),
        };
        let at = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.chain == chain)
            .nth(position - 1)
            .map(|(i, _)| i);
        match at {
            Some(i) => self.rules.insert(i, rule),
            None => self.rules.push(rule),
        }
    }

    /// Our chains this table uses (has rules in or jumps to), in `iptables-save` order.
    pub fn chains(&self) -> Vec<&'static str> {
        self.name
            .owned_chains()
            .iter()
            .copied()
            .filter(|chain| {
                self.rules
                    .iter()
                    .any(|r| r.chain == *chain || r.target() == Some(chain))
            })
            .collect()
    }

    /// The rules grouped by chain, built-in chains first then [`Table::chains`]: the order in
    /// which `iptables-save` prints them, and so the order of the restore document.
    pub fn ordered_rules(&self) -> Vec<&Rule> {
        let chains = self.chains();
        self.name
            .builtin_chains()
            .iter()
            .chain(chains.iter())
            .flat_map(|chain| self.rules.iter().filter(move |rule| rule.chain == *chain))
            .collect()
    }

    /// `:CHAIN - [0:0]` lines: with `--noflush` these create the chain, or flush it if it exists.
    pub fn chain_declarations(&self) -> Vec<String> {
        self.chains()
            .iter()
            .map(|chain| format!(":{chain} - [0:0]"))
            .collect()
    }

    /// The table as a block of an `iptables-restore --noflush` document, with `commands` (e.g.
    /// `-D`/`-F`/`-X` of a previous run) between the chain declarations and the rules.
    pub fn render_with(&self, commands: &[String]) -> String {
        let mut doc = format!("*{}\n", self.name.name());
        for line in self.chain_declarations().iter().chain(commands) {
            let _ = writeln!(doc, "{line}");
        }
        for rule in self.ordered_rules() {
            let _ = writeln!(doc, "{}", rule.to_append());
        }
        doc.push_str("COMMIT\n");
        doc
    }

    /// The `-A` lines, in order.
    pub fn lines(&self) -> Vec<String> {
        self.ordered_rules().iter().map(|r| r.to_append()).collect()
    }
}

/// The capture step's tables of one family: mangle, nat and raw (a table without rules is
/// empty, and left alone unless a previous run left something in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The family the addresses in the rules belong to.
    pub family: Family,
    /// mangle, nat, raw.
    pub tables: [Table; 3],
}

impl Tables {
    /// One table.
    pub fn get(&self, name: TableName) -> &Table {
        &self.tables[TableName::ALL
            .iter()
            .position(|t| *t == name)
            .expect("all tables")]
    }

    /// The document `--dry-run` prints: the tables that have rules.
    pub fn render(&self) -> String {
        self.tables
            .iter()
            .filter(|t| !t.rules.is_empty())
            .map(|t| t.render_with(&[]))
            .collect()
    }
}

/// What the capture rules need from the pod beyond the flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The nameservers of `/etc/resolv.conf` (read only for DNS capture without capture-all).
    pub nameservers: Vec<IpAddr>,
}

/// Whether DNS rules are generated at all: capture is on and there is something to capture.
pub fn dns_capture_active(cfg: &CaptureConfig, host: &Host) -> bool {
    cfg.redirect_dns && (cfg.capture_all_dns || !host.nameservers.is_empty())
}

/// Generates the tables for `family`, following the steps of Istio's `istio-iptables`:
///
/// 1. `-c`: `PREROUTING -i X -j RETURN`, `OUTPUT -o X -j RETURN` (nat, and mangle for TPROXY).
/// 2. `-k`: `PREROUTING -i K -j RETURN` inserted first in nat (so the last listed is on top).
/// 3. `--drop-invalid`: mangle `PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP`.
/// 4. nat `ISTIO_INBOUND` returns the tunnel port; `ISTIO_REDIRECT` and `ISTIO_IN_REDIRECT`.
/// 5. Inbound (`-b` not empty): REDIRECT mode sends nat `PREROUTING` TCP to `ISTIO_INBOUND`,
///    which returns the `-d` ports and redirects the rest (or only the `-b` ports); TPROXY mode
///    does the same in mangle, diverting established connections and TPROXYing new ones.
/// 6. nat `OUTPUT -j ISTIO_OUTPUT`, which: returns the `-o` ports (TCP and UDP); returns the
///    inbound passthrough source on `lo`; for each proxy uid then gid, sends the proxy's `lo`
///    connections to the pod's own IP to `ISTIO_IN_REDIRECT`, returns the app's other `lo`
///    traffic (unless `-i` names a loopback range) and returns the proxy's traffic; applies the
///    owner groups; jumps to `ISTIO_OUTPUT_DNS`; returns the loopback range and the `-x`
///    ranges; redirects the `-q` ports; and redirects everything (or the `-i` ranges).
/// 7. DNS capture: nat `ISTIO_OUTPUT_DNS` redirects TCP then UDP port 53 to the nameservers (or
///    to anywhere, with capture-all) to the DNS port; raw `ISTIO_OUTPUT_DNS`/`ISTIO_INBOUND` put
///    the proxy's upstream queries and the app's queries in separate conntrack zones, so an
///    app reusing the proxy's source port can never slip past the DNS proxy. With DNS on, the
///    proxy's `lo` rules leave port 53 alone (`! --dports 53,<tunnel>`, `! --dport 53`).
/// 8. TPROXY: mangle marks and connmarks for the proxy's connections over `lo`, and the three
///    `ISTIO_INBOUND` returns at the top.
pub fn tables(cfg: &CaptureConfig, family: Family, host: &Host) -> Tables {
    let mut mangle = Table::new(TableName::Mangle);
    let mut nat = Table::new(TableName::Nat);
    let mut raw = Table::new(TableName::Raw);
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let loopback = match family {
        Family::V4 => cfg.ipv4_loopback.to_string(),
        Family::V6 => "::1/128".to_string(),
    };
    let dns = dns_capture_active(cfg, host);
    let servers: Vec<&IpAddr> = host
        .nameservers
        .iter()
        .filter(|ip| family.contains_ip(ip))
        .collect();
    let family_dns = dns && (cfg.capture_all_dns || !servers.is_empty());
    let mark = format!("0x{:x}", cfg.tproxy_mark);
    let outbound_mark = format!("0x{OUTBOUND_MARK:x}");

    // 1. Excluded interfaces.
    for nic in &cfg.exclude_interfaces {
        nat.push("PREROUTING", format!("-i {nic} -j RETURN"));
        nat.push("OUTPUT", format!("-o {nic} -j RETURN"));
    }
    if tproxy {
        for nic in &cfg.exclude_interfaces {
            mangle.push("PREROUTING", format!("-i {nic} -j RETURN"));
            mangle.push("OUTPUT", format!("-o {nic} -j RETURN"));
        }
    }
    // 2. KubeVirt interfaces.
    for nic in &cfg.kube_virt_interfaces {
        nat.insert("PREROUTING", 1, format!("-i {nic} -j RETURN"));
    }
    // 3. Invalid packets.
    if cfg.drop_invalid {
        mangle.push(
            "PREROUTING",
            format!("-m conntrack --ctstate INVALID -j {ISTIO_DROP}"),
        );
        mangle.push(ISTIO_DROP, "-j DROP");
    }
    // 4. The redirect chains.
    nat.push(
        ISTIO_INBOUND,
        format!("-p tcp -m tcp --dport {} -j RETURN", cfg.tunnel_port),
    );
    nat.push(
        ISTIO_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.outbound_port),
    );
    nat.push(
        ISTIO_IN_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.inbound_port),
    );
    // 5. Inbound.
    let captures_inbound = match &cfg.inbound {
        InboundCapture::All => true,
        InboundCapture::Ports(ports) => !ports.is_empty(),
    };
    if captures_inbound {
        let inbound = if tproxy {
            mangle.push(
                ISTIO_DIVERT,
                format!("-j MARK --set-xmark {mark}/0xffffffff"),
            );
            mangle.push(ISTIO_DIVERT, "-j ACCEPT");
            mangle.push(
                ISTIO_TPROXY,
                format!(
                    "! -d {loopback} -p tcp -j TPROXY --on-port {} --on-ip {} --tproxy-mark {mark}/0xffffffff",
                    cfg.inbound_port,
                    family.any()
                ),
            );
            &mut mangle
        } else {
            &mut nat
        };
        inbound.push("PREROUTING", format!("-p tcp -j {ISTIO_INBOUND}"));
        match &cfg.inbound {
            InboundCapture::All => {
                for ports in port_matches("tcp", &cfg.inbound_exclude_ports) {
                    inbound.push(ISTIO_INBOUND, format!("{ports} -j RETURN"));
                }
                if tproxy {
                    inbound.push(
                        ISTIO_INBOUND,
                        format!(
                            "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j {ISTIO_DIVERT}"
                        ),
                    );
                    inbound.push(ISTIO_INBOUND, format!("-p tcp -j {ISTIO_TPROXY}"));
                } else {
                    inbound.push(ISTIO_INBOUND, format!("-p tcp -j {ISTIO_IN_REDIRECT}"));
                }
            }
            InboundCapture::Ports(ports) => {
                for port in ports {
                    if tproxy {
                        inbound.push(
                            ISTIO_INBOUND,
                            format!("-p tcp -m tcp --dport {port} -m conntrack --ctstate RELATED,ESTABLISHED -j {ISTIO_DIVERT}"),
                        );
                        inbound.push(
                            ISTIO_INBOUND,
                            format!("-p tcp -m tcp --dport {port} -j {ISTIO_TPROXY}"),
                        );
                    } else {
                        inbound.push(
                            ISTIO_INBOUND,
                            format!("-p tcp -m tcp --dport {port} -j {ISTIO_IN_REDIRECT}"),
                        );
                    }
                }
            }
        }
    }

    // 6. Outbound.
    nat.push("OUTPUT", format!("-j {ISTIO_OUTPUT}"));
    for proto in ["tcp", "udp"] {
        for ports in port_matches(proto, &cfg.outbound_exclude_ports) {
            nat.push(ISTIO_OUTPUT, format!("{ports} -j RETURN"));
        }
    }
    nat.push(
        ISTIO_OUTPUT,
        format!("-s {} -o lo -j RETURN", family.passthrough_source()),
    );
    // If the user asked to capture a loopback range, the app's own lo traffic must not return.
    let captures_loopback = match &cfg.outbound {
        OutboundCapture::All => false,
        OutboundCapture::Cidrs(cidrs) => cidrs.iter().any(|net| net.network().is_loopback()),
    };
    for (owner, id) in proxy_owners(cfg) {
        // Istio leaves port 53 out of the uid rule only; the gid rule keeps its plain form.
        let not_ports = if dns && owner == "--uid-owner" {
            format!("-m multiport ! --dports {DNS},{}", cfg.tunnel_port)
        } else {
            format!("-m tcp ! --dport {}", cfg.tunnel_port)
        };
        nat.push(
            ISTIO_OUTPUT,
            format!("! -d {loopback} -o lo -p tcp {not_ports} -m owner {owner} {id} -j {ISTIO_IN_REDIRECT}"),
        );
        if !captures_loopback {
            if dns {
                nat.push(
                    ISTIO_OUTPUT,
                    format!(
                        "-o lo -p tcp -m tcp ! --dport {DNS} -m owner ! {owner} {id} -j RETURN"
                    ),
                );
            } else {
                nat.push(
                    ISTIO_OUTPUT,
                    format!("-o lo -m owner ! {owner} {id} -j RETURN"),
                );
            }
        }
        nat.push(ISTIO_OUTPUT, format!("-m owner {owner} {id} -j RETURN"));
    }
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for group in groups {
                nat.push(
                    ISTIO_OUTPUT,
                    format!("-m owner --gid-owner {group} -j RETURN"),
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let mut spec: String = groups
                .iter()
                .map(|g| format!("-m owner ! --gid-owner {g} "))
                .collect();
            spec.push_str("-j RETURN");
            nat.push(ISTIO_OUTPUT, spec);
        }
    }
    // 7. DNS (nat).
    if family_dns {
        nat.push(ISTIO_OUTPUT, format!("-j {ISTIO_OUTPUT_DNS}"));
        for proto in ["tcp", "udp"] {
            if cfg.capture_all_dns {
                nat.push(
                    ISTIO_OUTPUT_DNS,
                    format!(
                        "-p {proto} -m {proto} --dport {DNS} -j REDIRECT --to-ports {}",
                        cfg.dns_port
                    ),
                );
            } else {
                for server in &servers {
                    nat.push(
                        ISTIO_OUTPUT_DNS,
                        format!(
                            "-d {} -p {proto} -m {proto} --dport {DNS} -j REDIRECT --to-ports {}",
                            family.host(server),
                            cfg.dns_port
                        ),
                    );
                }
            }
        }
    }
    nat.push(ISTIO_OUTPUT, format!("-d {loopback} -j RETURN"));
    for net in cfg
        .outbound_exclude_cidrs
        .iter()
        .filter(|net| family.contains(net))
    {
        nat.push(ISTIO_OUTPUT, format!("-d {} -j RETURN", net_text(net)));
    }
    for port in &cfg.outbound_ports {
        nat.push(
            ISTIO_OUTPUT,
            format!("-p tcp -m tcp --dport {port} -j {ISTIO_REDIRECT}"),
        );
    }
    match &cfg.outbound {
        OutboundCapture::All => {
            for nic in &cfg.kube_virt_interfaces {
                nat.insert("PREROUTING", 1, format!("-i {nic} -j {ISTIO_REDIRECT}"));
            }
            nat.push(ISTIO_OUTPUT, format!("-j {ISTIO_REDIRECT}"));
        }
        OutboundCapture::Cidrs(cidrs) => {
            for net in cidrs.iter().filter(|net| family.contains(net)) {
                let net = net_text(net);
                for nic in &cfg.kube_virt_interfaces {
                    nat.insert(
                        "PREROUTING",
                        1,
                        format!("-d {net} -i {nic} -j {ISTIO_REDIRECT}"),
                    );
                }
                nat.push(ISTIO_OUTPUT, format!("-d {net} -j {ISTIO_REDIRECT}"));
            }
        }
    }

    // 7. DNS (raw): conntrack zones.
    if dns {
        raw.push("OUTPUT", format!("-j {ISTIO_OUTPUT_DNS}"));
        for (owner, id) in proxy_owners(cfg) {
            raw.push(
                ISTIO_OUTPUT_DNS,
                format!("-p udp -m udp --dport {DNS} -m owner {owner} {id} -j CT --zone 1"),
            );
            raw.push(
                ISTIO_OUTPUT_DNS,
                format!(
                    "-p udp -m udp --sport {} -m owner {owner} {id} -j CT --zone 2",
                    cfg.dns_port
                ),
            );
        }
        if cfg.capture_all_dns {
            raw.push("PREROUTING", format!("-j {ISTIO_INBOUND}"));
            raw.push(
                ISTIO_OUTPUT_DNS,
                format!("-p udp -m udp --dport {DNS} -j CT --zone 2"),
            );
            raw.push(
                ISTIO_INBOUND,
                format!("-p udp -m udp --sport {DNS} -j CT --zone 1"),
            );
        } else if !servers.is_empty() {
            raw.push("PREROUTING", format!("-j {ISTIO_INBOUND}"));
            for server in &servers {
                let host = family.host(server);
                raw.push(
                    ISTIO_OUTPUT_DNS,
                    format!("-d {host} -p udp -m udp --dport {DNS} -j CT --zone 2"),
                );
                raw.push(
                    ISTIO_INBOUND,
                    format!("-s {host} -p udp -m udp --sport {DNS} -j CT --zone 1"),
                );
            }
        }
    }

    // 8. TPROXY marks.
    if tproxy {
        mangle.push(
            "PREROUTING",
            format!("-p tcp -m mark --mark {mark} -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
        );
        mangle.push(
            "OUTPUT",
            format!("-o lo -p tcp -m mark --mark {mark} -j RETURN"),
        );
        for (owner, id) in proxy_owners(cfg) {
            mangle.push(
                "OUTPUT",
                format!("! -d {loopback} -o lo -p tcp -m owner {owner} {id} -j MARK --set-xmark {outbound_mark}/0xffffffff"),
            );
        }
        mangle.push(
            "OUTPUT",
            format!("-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
        );
        mangle.insert(
            ISTIO_INBOUND,
            1,
            format!("-p tcp -m mark --mark {mark} -j RETURN"),
        );
        mangle.insert(
            ISTIO_INBOUND,
            2,
            format!("-s {} -i lo -p tcp -j RETURN", family.passthrough_source()),
        );
        mangle.insert(
            ISTIO_INBOUND,
            3,
            format!("-i lo -p tcp -m mark ! --mark {outbound_mark} -j RETURN"),
        );
    }

    Tables {
        family,
        tables: [mangle, nat, raw],
    }
}

/// The proxy's uids then gids, as `-m owner` options: every per-owner rule set follows this order.
fn proxy_owners(cfg: &CaptureConfig) -> impl Iterator<Item = (&'static str, &u32)> {
    cfg.proxy_uids
        .iter()
        .map(|uid| ("--uid-owner", uid))
        .chain(cfg.proxy_gids.iter().map(|gid| ("--gid-owner", gid)))
}

/// The most ports one `-m multiport` match takes.
const MULTIPORT_MAX: usize = 15;

/// Matches for `ports` of `proto`: `-p tcp -m tcp --dport 22` for one port, else
/// `-p tcp -m multiport --dports 22,80,443` (as Istio writes port lists since 1.25), in chunks of
/// the 15 ports a multiport match can hold.
fn port_matches(proto: &str, ports: &[u16]) -> Vec<String> {
    match ports {
        [] => Vec::new(),
        [port] => vec![format!("-p {proto} -m {proto} --dport {port}")],
        _ => ports
            .chunks(MULTIPORT_MAX)
            .map(|chunk| match chunk {
                [port] => format!("-p {proto} -m {proto} --dport {port}"),
                _ => {
                    let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
                    format!("-p {proto} -m multiport --dports {}", list.join(","))
                }
            })
            .collect(),
    }
}

/// The nameservers of a `resolv.conf` document, in order (`nameserver` lines; an address with
/// a zone (`fe80::1%eth0`) keeps only the address).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::config::IstioIptablesArgs;

    /// Istio's test configuration: no inbound or outbound capture, no DNS, uid/gid 1337.
    fn istio_test_args() -> IstioIptablesArgs {
        IstioIptablesArgs {
            inbound_ports: String::new(),
            outbound_cidrs: String::new(),
            inbound_exclude_ports: String::new(),
            redirect_dns: Some(false),
            ..IstioIptablesArgs::default()
        }
    }

    fn config(f: impl FnOnce(&mut IstioIptablesArgs)) -> CaptureConfig {
        let mut args = istio_test_args();
        f(&mut args);
        CaptureConfig::try_from(&args).unwrap()
    }

    fn host(servers: &[&str]) -> Host {
        Host {
            nameservers: servers.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    /// `iptables-save` output of one family: table → (user chains, `-A` lines).
    fn parse_save(save: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        for line in save.lines() {
            if let Some(table) = line.strip_prefix('*') {
                out.push((table.to_string(), Vec::new(), Vec::new()));
            } else if let Some(decl) = line.strip_prefix(':') {
                let (_, chains, _) = out.last_mut().unwrap();
                let name = decl.split_whitespace().next().unwrap();
                if decl.contains(" - ") {
                    chains.push(name.to_string());
                }
            } else if line.starts_with("-A ") {
                out.last_mut().unwrap().2.push(line.to_string());
            }
        }
        out
    }

    /// Checks that the generated tables are, table by table, what iptables-save printed after
    /// Istio's `istio-iptables` applied the same configuration (the files in `testdata/`).
    fn assert_matches_istio(name: &str, cfg: &CaptureConfig, host: &Host, save: &str) {
        let (v4, v6) = match save.split_once("=== ip6tables-save ===") {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (save, None),
        };
        let families = [(Family::V4, Some(v4)), (Family::V6, v6)];
        for (family, save) in families {
            let Some(save) = save else { continue };
            let expected = parse_save(save);
            if expected.is_empty() {
                // Only the other family was measured.
                continue;
            }
            let got = tables(cfg, family, host);
            for table in TableName::ALL {
                let generated = got.get(table);
                match expected.iter().find(|(t, _, _)| t == table.name()) {
                    Some((_, chains, lines)) => {
                        assert_eq!(
                            &generated.lines(),
                            lines,
                            "{name} {} {}: rules differ",
                            family.name(),
                            table.name()
                        );
                        assert_eq!(
                            &generated.chains(),
                            chains,
                            "{name} {} {}: chains differ",
                            family.name(),
                            table.name()
                        );
                    }
                    None => assert!(
                        generated.rules.is_empty(),
                        "{name} {} {}: Istio has no such table, got {:#?}",
                        family.name(),
                        table.name(),
                        generated.lines()
                    ),
                }
            }
        }
    }

    macro_rules! istio_case {
        ($test:ident, $file:literal, $servers:expr, $args:expr) => {
            #[test]
            fn $test() {
                let cfg = config($args);
                assert_matches_istio(
                    $file,
                    &cfg,
                    &host($servers),
                    include_str!(concat!("testdata/", $file, ".save")),
                );
            }
        };
    }

    istio_case!(istio_empty, "empty", &[], |_| {});
    istio_case!(
        istio_inbound_ports_wildcard,
        "inbound-ports-wildcard",
        &[],
        |a| {
            a.inbound_ports = "*".into();
        }
    );
    istio_case!(
        istio_inbound_wildcard_exclude,
        "inbound-wildcard-exclude",
        &[],
        |a| {
            a.inbound_ports = "*".into();
            a.inbound_exclude_ports = "22,80,443".into();
        }
    );
    istio_case!(istio_tproxy, "tproxy", &["127.0.0.53"], |a| {
        a.inbound_interception_mode = "TPROXY".into();
        a.inbound_ports = "*".into();
        a.outbound_exclude_cidrs = "1.1.0.0/16".into();
        a.outbound_cidrs = "9.9.0.0/16".into();
        a.redirect_dns = Some(true);
        a.exclude_interfaces = "not-istio-nic".into();
    });
    istio_case!(
        istio_inbound_ports_tproxy,
        "inbound-ports-tproxy",
        &[],
        |a| {
            a.inbound_interception_mode = "TPROXY".into();
            a.inbound_ports = "32000,31000".into();
        }
    );
    istio_case!(
        istio_kube_virt_interfaces,
        "kube-virt-interfaces",
        &[],
        |a| {
            a.kube_virt_interfaces = "eth1,eth2".into();
            a.outbound_cidrs = "*".into();
        }
    );
    istio_case!(
        istio_ipnets_with_kube_virt_interfaces,
        "ipnets-with-kube-virt-interfaces",
        &[],
        |a| {
            a.kube_virt_interfaces = "eth1,eth2".into();
            a.outbound_cidrs = "10.0.0.0/8".into();
        }
    );
    istio_case!(istio_ipv6_ipnets, "ipv6-ipnets", &[], |a| {
        a.inbound_ports = "4000,5000".into();
        a.inbound_exclude_ports = "6000,7000,".into();
        a.kube_virt_interfaces = "eth0,eth1".into();
        a.outbound_exclude_cidrs = "2001:db8::/32".into();
        a.outbound_cidrs = "2001:db8::/32".into();
    });
    istio_case!(
        istio_outbound_ports_include,
        "outbound-ports-include",
        &[],
        |a| {
            a.outbound_ports = "32000,31000".into();
        }
    );
    istio_case!(
        istio_outbound_ports_exclude,
        "outbound-ports-exclude",
        &[],
        |a| {
            a.outbound_exclude_ports = "22,80,443".into();
        }
    );
    istio_case!(
        istio_outbound_ports_exclude_single,
        "outbound-ports-exclude-single",
        &[],
        |a| a.outbound_exclude_ports = "22".into()
    );
    istio_case!(istio_basic_exclude_nic, "basic-exclude-nic", &[], |a| {
        a.exclude_interfaces = "not-istio-nic".into();
    });
    istio_case!(istio_drop_invalid, "drop-invalid", &[], |a| {
        a.drop_invalid = Some(true);
    });
    // `java` is gid 2001 in the group file the expected output was measured with.
    istio_case!(
        istio_outbound_owner_groups,
        "outbound-owner-groups",
        &[],
        |a| {
            a.env.owner_groups = Some("2001,202".into());
        }
    );
    istio_case!(
        istio_outbound_owner_groups_exclude,
        "outbound-owner-groups-exclude",
        &[],
        |a| {
            a.env.owner_groups_exclude = Some("888,2003".into());
            // DNS on without nameservers: no DNS rules at all.
            a.redirect_dns = Some(true);
        }
    );
    istio_case!(
        istio_host_ipv4_loopback_cidr,
        "host-ipv4-loopback-cidr",
        &[],
        |a| {
            a.env.ipv4_loopback_cidr = Some("127.0.0.1/8".into());
        }
    );
    istio_case!(istio_dns_nameserver, "dns-ns", &["10.96.0.10"], |a| {
        a.redirect_dns = Some(true);
    });
    istio_case!(
        istio_dns_uid_gid,
        "dns-uid-gid",
        &["127.0.0.53", "::127.0.0.53"],
        |a| {
            a.redirect_dns = Some(true);
            a.proxy_uid = Some("3,4".into());
            a.proxy_gid = Some("1,2".into());
        }
    );
    istio_case!(istio_capture_all_dns, "capture-all-dns", &[], |a| {
        a.redirect_dns = Some(true);
        a.capture_all_dns = true;
    });
    istio_case!(istio_ip_range, "ip-range", &["127.0.0.53"], |a| {
        a.outbound_exclude_cidrs = "1.1.0.0/16".into();
        a.outbound_cidrs = "9.9.0.0/16".into();
        a.redirect_dns = Some(true);
        a.proxy_uid = Some("3,4".into());
        a.proxy_gid = Some("1,2".into());
    });
    istio_case!(
        istio_loopback_outbound_iprange,
        "loopback-outbound-iprange",
        &["127.0.0.53"],
        |a| {
            a.outbound_cidrs = "127.1.2.3/32".into();
            a.redirect_dns = Some(true);
            a.proxy_uid = Some("3,4".into());
            a.proxy_gid = Some("1,2".into());
        }
    );

    /// rustmesh's defaults are the arguments Istio's injector passes
    /// (`-i '*' -b '*' -d 15090,15021,15020`).
    #[test]
    fn defaults_are_what_istio_programs_for_an_injected_pod() {
        let cfg = CaptureConfig::try_from(&IstioIptablesArgs {
            redirect_dns: Some(false),
            ..IstioIptablesArgs::default()
        })
        .unwrap();
        let expected = include_str!("testdata/injector-default.save").replace(
            "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN\n\
             -A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN\n\
             -A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN\n",
            // Since Istio 1.25 a port list is one multiport rule.
            "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN\n",
        );
        assert!(expected.contains("multiport"));
        assert_matches_istio("injector-default", &cfg, &Host::default(), &expected);
    }

    #[test]
    fn dns_follows_the_nameservers_of_each_family() {
        let cfg = config(|a| a.redirect_dns = Some(true));
        let v6 = tables(&cfg, Family::V6, &host(&["10.96.0.10"]));
        // No IPv6 nameserver: no IPv6 redirect, but the zones of the proxy's own queries.
        assert!(
            !v6.get(TableName::Nat)
                .lines()
                .iter()
                .any(|l| l.contains(ISTIO_OUTPUT_DNS))
        );
        assert_eq!(v6.get(TableName::Raw).chains(), [ISTIO_OUTPUT_DNS]);
        // No nameserver at all: no DNS rules, and the uid rules keep their plain form.
        let none = tables(&cfg, Family::V4, &Host::default());
        assert!(none.get(TableName::Raw).rules.is_empty());
        assert!(!none.render().contains("53"), "{}", none.render());
    }

    #[test]
    fn ipv6_addresses_are_written_as_iptables_prints_them() {
        let text = |s: &str| addr_text(&s.parse().unwrap());
        assert_eq!(text("::127.0.0.53"), "::127.0.0.53");
        assert_eq!(text("::6"), "::6");
        assert_eq!(text("::1"), "::1");
        assert_eq!(text("::ffff:10.0.0.1"), "::ffff:10.0.0.1");
        assert_eq!(text("fd00::53"), "fd00::53");
        assert_eq!(
            net_text(&"::10.0.0.0/104".parse().unwrap()),
            "::10.0.0.0/104"
        );
    }

    #[test]
    fn more_than_fifteen_ports_take_several_multiport_rules() {
        let ports: Vec<u16> = (1..=16).collect();
        let matches = port_matches("tcp", &ports);
        assert_eq!(
            matches,
            [
                "-p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
                "-p tcp -m tcp --dport 16",
            ]
        );
        assert_eq!(port_matches("udp", &[53]), ["-p udp -m udp --dport 53"]);
        assert!(port_matches("tcp", &[]).is_empty());
    }

    #[test]
    fn owner_group_include_list_is_one_rule_and_an_empty_one_captures_nothing() {
        let nat = |groups: &str| {
            let cfg = config(|a| a.env.owner_groups = Some(groups.into()));
            tables(&cfg, Family::V4, &Host::default())
                .get(TableName::Nat)
                .lines()
        };
        assert!(
            nat("5").contains(&"-A ISTIO_OUTPUT -m owner ! --gid-owner 5 -j RETURN".to_string())
        );
        assert!(nat("").contains(&"-A ISTIO_OUTPUT -j RETURN".to_string()));
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let conf = "# comment\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver fe80::1%eth0\nnameserver   2001:db8::53 \noptions ndots:5\nnameserver bogus\n";
        assert_eq!(
            nameservers(conf),
            ["10.96.0.10", "fe80::1", "2001:db8::53"].map(|s| s.parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn rendered_document_declares_chains_then_commands_then_rules() {
        let nat = tables(&CaptureConfig::default(), Family::V4, &Host::default());
        let doc = nat
            .get(TableName::Nat)
            .render_with(&["-D OUTPUT -p tcp -j ISTIO_OUTPUT".to_string()]);
        let lines: Vec<&str> = doc.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":ISTIO_INBOUND - [0:0]");
        assert_eq!(lines[5], "-D OUTPUT -p tcp -j ISTIO_OUTPUT");
        assert_eq!(lines[6], "-A PREROUTING -p tcp -j ISTIO_INBOUND");
        assert_eq!(*lines.last().unwrap(), "COMMIT");
        assert_eq!(
            Rule {
                chain: "OUTPUT",
                spec: "-m comment --comment \"a -j B\" -j ISTIO_OUTPUT".into()
            }
            .target(),
            Some("ISTIO_OUTPUT")
        );
        assert_eq!(
            Rule {
                chain: "X",
                spec: "-j DROP".into()
            }
            .target(),
            Some("DROP")
        );
    }
}
