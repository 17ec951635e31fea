//! The flags of `proxy istio-iptables` (Istio's names, short letters and defaults) and their
//! validation into a [`CaptureConfig`].
//!
//! Flags are taken as strings, exactly as Istio's `istio-iptables` takes them, and checked here so
//! that every bad value is reported with the flag's name before anything is applied.

use std::net::IpAddr;

use ipnet::IpNet;
use rustmesh_xds::well_known::{
    DEFAULT_EXCLUDED_INBOUND_PORTS, DNS_PORT, INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT,
    PROXY_UID, TUNNEL_PORT,
};

use crate::{Error, Result};

/// Command-line flags of `proxy istio-iptables`: Istio's `istio-iptables` flags, with Istio's
/// names, short letters and environment variables (a flag on the command line wins over its
/// variable). Defaults are the arguments Istio's injector passes, so a bare run captures as an
/// injected pod does; see `proxy/README.md` ("Traffic capture") for the differences from Istio.
#[derive(Debug, Clone, clap::Args)]
// A repeated flag overrides the earlier one, as with Istio's (pflag) command line.
#[command(
    about = "Program iptables so that the pod's TCP traffic goes through the sidecar",
    args_override_self = true
)]
pub struct IstioIptablesArgs {
    /// Port to which all outbound TCP traffic is redirected.
    #[arg(short = 'p', long = "envoy-port", value_name = "PORT",
          default_value_t = OUTBOUND_CAPTURE_PORT.to_string())]
    pub envoy_port: String,

    /// Port to which all inbound TCP traffic is redirected.
    #[arg(short = 'z', long = "inbound-capture-port", value_name = "PORT",
          env = "INBOUND_CAPTURE_PORT", default_value_t = INBOUND_CAPTURE_PORT.to_string())]
    pub inbound_capture_port: String,

    /// Tunnel (HBONE) port; inbound traffic to it is never redirected.
    #[arg(short = 'e', long = "inbound-tunnel-port", value_name = "PORT",
          env = "INBOUND_TUNNEL_PORT", default_value_t = TUNNEL_PORT.to_string())]
    pub inbound_tunnel_port: String,

    /// Comma-separated uids whose traffic is never redirected (the proxy's). Default: the uid of
    /// the user named by ENVOY_USER when that is set, else 1337.
    #[arg(
        short = 'u',
        long = "proxy-uid",
        value_name = "UIDS",
        env = "PROXY_UID"
    )]
    pub proxy_uid: Option<String>,

    /// Comma-separated gids whose traffic is never redirected (default: the value of -u).
    #[arg(
        short = 'g',
        long = "proxy-gid",
        value_name = "GIDS",
        env = "PROXY_GID"
    )]
    pub proxy_gid: Option<String>,

    /// Inbound interception mode: REDIRECT (nat) or TPROXY (mangle, keeps the client's address).
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        value_name = "MODE",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        default_value = "REDIRECT"
    )]
    pub inbound_interception_mode: String,

    /// Outbound destinations to capture: `*` for all, or comma-separated CIDRs; empty for none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        value_name = "CIDRS",
        env = "ISTIO_SERVICE_CIDR",
        default_value = "*"
    )]
    pub outbound_cidrs: String,

    /// Outbound destinations never captured: comma-separated CIDRs.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        value_name = "CIDRS",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        default_value = ""
    )]
    pub outbound_exclude_cidrs: String,

    /// Inbound ports to capture: `*` for all, or comma-separated ports; empty for none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        value_name = "PORTS",
        env = "ISTIO_INBOUND_PORTS",
        default_value = "*"
    )]
    pub inbound_ports: String,

    /// Inbound ports never captured when -b is `*`: comma-separated ports.
    #[arg(short = 'd', long = "istio-local-exclude-ports", value_name = "PORTS",
          env = "ISTIO_LOCAL_EXCLUDE_PORTS", default_value_t = default_excluded_inbound_ports())]
    pub inbound_exclude_ports: String,

    /// Outbound TCP ports always captured, whatever the destination: comma-separated ports.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        value_name = "PORTS",
        env = "ISTIO_OUTBOUND_PORTS",
        default_value = ""
    )]
    pub outbound_ports: String,

    /// Outbound ports never captured (TCP and UDP): comma-separated ports.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        value_name = "PORTS",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        default_value = ""
    )]
    pub outbound_exclude_ports: String,

    /// Interfaces whose traffic is never captured, in or out: comma-separated names.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        value_name = "NICS",
        env = "ISTIO_EXCLUDE_INTERFACES",
        default_value = ""
    )]
    pub exclude_interfaces: String,

    /// Virtual-machine interfaces (KubeVirt) whose inbound traffic is treated as outbound:
    /// comma-separated names.
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        value_name = "NICS",
        env = "KUBE_VIRT_INTERFACES",
        default_value = ""
    )]
    pub kube_virt_interfaces: String,

    /// TPROXY mode: the mark of intercepted inbound packets (a decimal number).
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        value_name = "MARK",
        env = "ISTIO_INBOUND_TPROXY_MARK",
        default_value = "1337"
    )]
    pub tproxy_mark: String,

    /// TPROXY mode: the routing table that delivers marked packets locally.
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        value_name = "TABLE",
        env = "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
        default_value = "133"
    )]
    pub tproxy_route_table: String,

    /// Redirect DNS (port 53, UDP and TCP) sent to the nameservers of /etc/resolv.conf to the
    /// sidecar's DNS proxy (127.0.0.1:15053). Variables: REDIRECT_DNS, and ISTIO_META_DNS_CAPTURE
    /// (which wins). Default: on (rustmesh's choice; Istio's is off).
    #[arg(long = "redirect-dns", value_name = "BOOL", value_parser = parse_go_bool,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub redirect_dns: Option<bool>,

    /// With DNS capture, redirect DNS to any address, not only to the resolv.conf nameservers.
    #[arg(long = "capture-all-dns", value_name = "BOOL", value_parser = parse_go_bool,
          env = "CAPTURE_ALL_DNS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false")]
    pub capture_all_dns: bool,

    /// Drop inbound packets conntrack finds INVALID. Variables: DROP_INVALID, and INVALID_DROP
    /// (which wins).
    #[arg(long = "drop-invalid", value_name = "BOOL", value_parser = parse_go_bool,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub drop_invalid: Option<bool>,

    /// IPv6 rules: `auto` applies them when the pod has a global IPv6 address.
    #[arg(long = "ipv6", value_name = "WHEN", value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// Print the rules in iptables-restore format and apply nothing.
    #[arg(short = 'n', long = "dry-run", value_parser = parse_go_bool, env = "DRY_RUN",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false")]
    pub dry_run: bool,

    /// Check every flag and read the current rules, but apply nothing.
    #[arg(long = "skip-rule-apply", value_parser = parse_go_bool, env = "SKIP_RULE_APPLY",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false")]
    pub skip_rule_apply: bool,

    /// Remove the capture rules and chains instead of installing them.
    #[arg(long = "cleanup", visible_aliases = ["remove", "cleanup-only"],
          value_parser = parse_go_bool, env = "CLEANUP_ONLY", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "false")]
    pub cleanup: bool,

    /// Istio's: remove rules left by a previous run before applying. rustmesh always does, so
    /// this flag (and RECONCILE) changes nothing; `--reconcile=false` is refused.
    #[arg(long = "reconcile", value_parser = parse_go_bool, env = "RECONCILE",
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub reconcile: Option<bool>,

    /// Istio's: apply even when rules of a previous run are found. rustmesh always replaces
    /// them, so this flag (and FORCE_APPLY) changes nothing; `--force-apply=false` is refused.
    #[arg(long = "force-apply", value_parser = parse_go_bool, env = "FORCE_APPLY",
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub force_apply: Option<bool>,

    /// Accepted for compatibility with Istio's injected arguments (use RUST_LOG for levels).
    #[arg(long = "log_output_level", value_name = "LEVELS")]
    pub log_output_level: Option<String>,

    /// Istio flags rustmesh does not implement; giving one is an error naming it.
    #[arg(long = "run-validation", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub run_validation: Option<String>,
    #[arg(long = "iptables-probe-port", hide = true)]
    #[allow(missing_docs)]
    pub iptables_probe_port: Option<String>,
    #[arg(long = "probe-timeout", hide = true)]
    #[allow(missing_docs)]
    pub probe_timeout: Option<String>,
    #[arg(long = "network-namespace", hide = true)]
    #[allow(missing_docs)]
    pub network_namespace: Option<String>,
    #[arg(long = "cni-mode", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    #[allow(missing_docs)]
    pub cni_mode: Option<String>,
    #[arg(long = "native-nftables", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    #[allow(missing_docs)]
    pub native_nftables: Option<String>,
    /// Istio's `--force-iptables-version` (the flag its `ForceIptablesBinary` setting binds,
    /// variable `FORCE_IPTABLES_VERSION`; Istio 1.28's notes call the variable
    /// `FORCE_IPTABLES_BINARY`, refused too).
    #[arg(long = "force-iptables-version", hide = true)]
    pub force_iptables_version: Option<String>,
    /// `--force-legacy-iptables`, the name of the same break-glass switch in other Istio sources.
    #[arg(long = "force-legacy-iptables", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub force_legacy_iptables: Option<String>,
    /// `--iptables-trace-logging` (Istio until 1.22: a LOG rule per chain).
    #[arg(long = "iptables-trace-logging", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub iptables_trace_logging: Option<String>,
    /// `--host-nsenter-exec` (Istio's CNI: enter the network namespace with nsenter).
    #[arg(long = "host-nsenter-exec", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub host_nsenter_exec: Option<String>,
    #[arg(long = "dual-stack", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    #[allow(missing_docs)]
    pub dual_stack: Option<String>,
    #[arg(long = "log_as_json", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    #[allow(missing_docs)]
    pub log_as_json: Option<String>,

    /// The variables Istio reads that have no flag, and the second names of some flags:
    /// filled from the environment by [`IstioIptablesArgs::read_environment`].
    #[arg(skip)]
    pub env: CaptureEnv,
}

/// Environment variables `istio-iptables` reads besides the ones bound to flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureEnv {
    /// `ISTIO_OUTBOUND_OWNER_GROUPS`: groups whose outbound traffic is captured (`*`: all).
    pub owner_groups: Option<String>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`: groups never captured (with `*` above).
    pub owner_groups_exclude: Option<String>,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: the IPv4 loopback range (default 127.0.0.1/32).
    pub ipv4_loopback_cidr: Option<String>,
    /// `ENVOY_USER`: the user whose uid is the default of -u.
    pub envoy_user: Option<String>,
    /// `REDIRECT_DNS`.
    pub redirect_dns: Option<String>,
    /// `ISTIO_META_DNS_CAPTURE` (wins over `REDIRECT_DNS`).
    pub dns_capture: Option<String>,
    /// `DROP_INVALID`.
    pub drop_invalid: Option<String>,
    /// `INVALID_DROP` (wins over `DROP_INVALID`).
    pub invalid_drop: Option<String>,
    /// Variables of Istio features rustmesh does not implement that are set (name, value).
    pub unimplemented: Vec<(&'static str, String)>,
}

/// Variables Istio's `istio-iptables` reads (in its current or an earlier release) for features
/// rustmesh does not implement, with the flag each binds (each flag's variable is its name in
/// capitals, `-` as `_`, as Istio binds them; some have a second name).
pub const UNIMPLEMENTED_VARIABLES: [(&str, &str); 15] = [
    ("RUN_VALIDATION", "--run-validation"),
    ("IPTABLES_PROBE_PORT", "--iptables-probe-port"),
    ("PROBE_TIMEOUT", "--probe-timeout"),
    ("NETWORK_NAMESPACE", "--network-namespace"),
    ("CNI_MODE", "--cni-mode"),
    ("NATIVE_NFTABLES", "--native-nftables"),
    ("FORCE_IPTABLES_VERSION", "--force-iptables-version"),
    ("FORCE_IPTABLES_BINARY", "--force-iptables-version"),
    ("FORCE_LEGACY_IPTABLES", "--force-legacy-iptables"),
    ("IPTABLES_TRACE_LOGGING", "--iptables-trace-logging"),
    ("HOST_NSENTER_EXEC", "--host-nsenter-exec"),
    ("DUAL_STACK", "--dual-stack"),
    ("ISTIO_DUAL_STACK", "--dual-stack"),
    ("ISTIO_AGENT_DUAL_STACK", "--dual-stack"),
    // Registered by Istio's capture without a flag, and read instead of -m and -t by some of its
    // releases: rustmesh reads only the flags' own variables.
    (
        "INBOUND_INTERCEPTION_MODE",
        "-m/--istio-inbound-interception-mode",
    ),
];

/// Variables among [`UNIMPLEMENTED_VARIABLES`] that take a value rather than a boolean, so that
/// even `false` is refused (for the others `false` asks for nothing rustmesh lacks).
const VALUED_VARIABLES: [&str; 7] = [
    "IPTABLES_PROBE_PORT",
    "PROBE_TIMEOUT",
    "NETWORK_NAMESPACE",
    "FORCE_IPTABLES_VERSION",
    "FORCE_IPTABLES_BINARY",
    "INBOUND_INTERCEPTION_MODE",
    "INBOUND_TPROXY_MARK",
];

/// Istio's `INBOUND_TPROXY_MARK`: like `INBOUND_INTERCEPTION_MODE`, the second name some Istio
/// releases read instead of a flag (`-t`), refused by name.
const INBOUND_TPROXY_MARK: (&str, &str) = ("INBOUND_TPROXY_MARK", "-t/--istio-inbound-tproxy-mark");

impl IstioIptablesArgs {
    /// Fills [`IstioIptablesArgs::env`] from `lookup` (the process environment in `main`).
    /// An empty variable counts as unset, except the owner groups, where Istio reads an empty
    /// include list as "no group".
    pub fn read_environment(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        let set = |name: &str| lookup(name).filter(|v| !v.is_empty());
        self.env = CaptureEnv {
            owner_groups: lookup("ISTIO_OUTBOUND_OWNER_GROUPS"),
            owner_groups_exclude: set("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
            ipv4_loopback_cidr: set("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"),
            envoy_user: set("ENVOY_USER"),
            redirect_dns: set("REDIRECT_DNS"),
            dns_capture: set("ISTIO_META_DNS_CAPTURE"),
            drop_invalid: set("DROP_INVALID"),
            invalid_drop: set("INVALID_DROP"),
            unimplemented: UNIMPLEMENTED_VARIABLES
                .iter()
                .chain([&INBOUND_TPROXY_MARK])
                .filter_map(|(name, _)| set(name).map(|v| (*name, v)))
                // For a switch, "false" asks for nothing rustmesh lacks.
                .filter(|(name, v)| {
                    VALUED_VARIABLES.contains(name) || parse_go_bool(v) != Ok(false)
                })
                .collect(),
        };
    }
}

impl Default for IstioIptablesArgs {
    fn default() -> Self {
        Self {
            envoy_port: OUTBOUND_CAPTURE_PORT.to_string(),
            inbound_capture_port: INBOUND_CAPTURE_PORT.to_string(),
            inbound_tunnel_port: TUNNEL_PORT.to_string(),
            proxy_uid: None,
            proxy_gid: None,
            inbound_interception_mode: "REDIRECT".into(),
            outbound_cidrs: "*".into(),
            outbound_exclude_cidrs: String::new(),
            inbound_ports: "*".into(),
            inbound_exclude_ports: default_excluded_inbound_ports(),
            outbound_ports: String::new(),
            outbound_exclude_ports: String::new(),
            exclude_interfaces: String::new(),
            kube_virt_interfaces: String::new(),
            tproxy_mark: "1337".into(),
            tproxy_route_table: "133".into(),
            redirect_dns: None,
            capture_all_dns: false,
            drop_invalid: None,
            ipv6: Ipv6Mode::Auto,
            dry_run: false,
            skip_rule_apply: false,
            cleanup: false,
            reconcile: None,
            force_apply: None,
            log_output_level: None,
            run_validation: None,
            iptables_probe_port: None,
            probe_timeout: None,
            network_namespace: None,
            cni_mode: None,
            native_nftables: None,
            force_iptables_version: None,
            force_legacy_iptables: None,
            iptables_trace_logging: None,
            host_nsenter_exec: None,
            dual_stack: None,
            log_as_json: None,
            env: CaptureEnv::default(),
        }
    }
}

/// Booleans as Go's `strconv.ParseBool` (and so Istio) reads them.
pub fn parse_go_bool(value: &str) -> std::result::Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    }
}

fn default_excluded_inbound_ports() -> String {
    join(&DEFAULT_EXCLUDED_INBOUND_PORTS)
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// When to program ip6tables as well as iptables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// When this network namespace has a global IPv6 address.
    Auto,
    /// Always (fails if ip6tables cannot be used).
    Always,
    /// Never.
    Never,
}

/// Which outbound destinations are captured (`-i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundCapture {
    /// `*`: everything that is not excluded.
    All,
    /// Only these ranges (an empty list captures nothing).
    Cidrs(Vec<IpNet>),
}

/// Which inbound ports are captured (`-b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundCapture {
    /// `*`: every port except the excluded ones (`-d`) and the tunnel port.
    All,
    /// Only these ports (an empty list captures nothing).
    Ports(Vec<u16>),
}

/// How inbound connections reach the sidecar (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    /// nat `REDIRECT`: the sidecar sees the original destination with `SO_ORIGINAL_DST`.
    Redirect,
    /// mangle `TPROXY`: the packet keeps its addresses and is delivered to the sidecar's
    /// transparent listener through a policy route.
    Tproxy,
}

/// Which groups' outbound traffic is captured (`ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Every group but these (`*` with an exclude list; the default, with an empty list).
    AllExcept(Vec<String>),
    /// Only these groups.
    Only(Vec<String>),
}

/// At most this many groups may be listed in `ISTIO_OUTBOUND_OWNER_GROUPS` (Istio's limit: one
/// `-m owner` match each, in one rule).
pub const MAX_OWNER_GROUPS: usize = 64;

/// A validated capture configuration: what the rules are generated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// `-p`: outbound capture port.
    pub outbound_port: u16,
    /// `-z`: inbound capture port.
    pub inbound_port: u16,
    /// `-e`: tunnel port, never captured inbound.
    pub tunnel_port: u16,
    /// `-u`: uids that are never captured.
    pub proxy_uids: Vec<u32>,
    /// `-g`: gids that are never captured.
    pub proxy_gids: Vec<u32>,
    /// `-m`.
    pub mode: InterceptionMode,
    /// `-i`.
    pub outbound: OutboundCapture,
    /// `-x`.
    pub outbound_exclude_cidrs: Vec<IpNet>,
    /// `-b`.
    pub inbound: InboundCapture,
    /// `-d`.
    pub inbound_exclude_ports: Vec<u16>,
    /// `-q`.
    pub outbound_ports: Vec<u16>,
    /// `-o`.
    pub outbound_exclude_ports: Vec<u16>,
    /// `-c`.
    pub exclude_interfaces: Vec<String>,
    /// `-k`.
    pub kube_virt_interfaces: Vec<String>,
    /// `-t`.
    pub tproxy_mark: u32,
    /// `-r`.
    pub tproxy_route_table: u32,
    /// `--redirect-dns`: DNS to the nameservers goes to [`CaptureConfig::dns_port`] on localhost.
    pub redirect_dns: bool,
    /// `--capture-all-dns`: DNS to any address is redirected.
    pub capture_all_dns: bool,
    /// `--drop-invalid`.
    pub drop_invalid: bool,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`, names or gids as given.
    pub owner_groups: OwnerGroups,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`.
    pub ipv4_loopback: IpNet,
    /// Where DNS is redirected (the proxy's DNS listener).
    pub dns_port: u16,
}

impl Default for CaptureConfig {
    /// The configuration Istio's injector asks for.
    fn default() -> Self {
        Self::try_from(&IstioIptablesArgs::default()).expect("the defaults are valid")
    }
}

impl TryFrom<&IstioIptablesArgs> for CaptureConfig {
    type Error = Error;

    fn try_from(args: &IstioIptablesArgs) -> Result<Self> {
        refuse_unimplemented(args)?;
        let mode = match args.inbound_interception_mode.as_str() {
            "REDIRECT" | "" => InterceptionMode::Redirect,
            "TPROXY" => InterceptionMode::Tproxy,
            "NONE" => {
                return Err(invalid(
                    "-m/--istio-inbound-interception-mode",
                    &args.inbound_interception_mode,
                    "NONE means no capture: do not run istio-iptables (the injector adds no \
                     istio-init for sidecar.istio.io/interceptionMode: NONE)",
                ));
            }
            _ => {
                return Err(invalid(
                    "-m/--istio-inbound-interception-mode",
                    &args.inbound_interception_mode,
                    "unknown mode; the modes are REDIRECT and TPROXY",
                ));
            }
        };

        let proxy_uids = match (&args.proxy_uid, &args.env.envoy_user) {
            (Some(uids), _) => parse_ids("-u/--proxy-uid", uids)?,
            (None, Some(user)) => vec![lookup_user(user)?],
            (None, None) => vec![PROXY_UID],
        };
        let proxy_gids = match &args.proxy_gid {
            Some(gids) => parse_ids("-g/--proxy-gid", gids)?,
            None => proxy_uids.clone(),
        };

        let outbound = if args.outbound_cidrs.trim() == "*" {
            OutboundCapture::All
        } else {
            OutboundCapture::Cidrs(parse_cidrs(
                "-i/--istio-service-cidr",
                &args.outbound_cidrs,
            )?)
        };
        if args.outbound_exclude_cidrs.trim() == "*" {
            return Err(invalid(
                "-x/--istio-service-exclude-cidr",
                &args.outbound_exclude_cidrs,
                "`*` would exclude everything; use -i \"\" to capture no outbound traffic",
            ));
        }
        let inbound = if args.inbound_ports.trim() == "*" {
            InboundCapture::All
        } else {
            InboundCapture::Ports(parse_ports(
                "-b/--istio-inbound-ports",
                &args.inbound_ports,
            )?)
        };

        let env = &args.env;
        let redirect_dns = match (args.redirect_dns, &env.dns_capture, &env.redirect_dns) {
            (Some(flag), _, _) => flag,
            (None, Some(v), _) => env_bool("ISTIO_META_DNS_CAPTURE", v)?,
            (None, None, Some(v)) => env_bool("REDIRECT_DNS", v)?,
            (None, None, None) => true,
        };
        let drop_invalid = match (args.drop_invalid, &env.invalid_drop, &env.drop_invalid) {
            (Some(flag), _, _) => flag,
            (None, Some(v), _) => env_bool("INVALID_DROP", v)?,
            (None, None, Some(v)) => env_bool("DROP_INVALID", v)?,
            (None, None, None) => false,
        };
        for (flag, value) in [
            ("--reconcile", args.reconcile),
            ("--force-apply", args.force_apply),
        ] {
            if value == Some(false) {
                return Err(invalid(
                    flag,
                    "false",
                    "rustmesh always replaces the rules of a previous run; it cannot be turned off",
                ));
            }
        }

        Ok(Self {
            outbound_port: parse_port("-p/--envoy-port", &args.envoy_port)?,
            inbound_port: parse_port("-z/--inbound-capture-port", &args.inbound_capture_port)?,
            tunnel_port: parse_port("-e/--inbound-tunnel-port", &args.inbound_tunnel_port)?,
            proxy_uids,
            proxy_gids,
            mode,
            outbound,
            outbound_exclude_cidrs: parse_cidrs(
                "-x/--istio-service-exclude-cidr",
                &args.outbound_exclude_cidrs,
            )?,
            inbound,
            inbound_exclude_ports: parse_ports(
                "-d/--istio-local-exclude-ports",
                &args.inbound_exclude_ports,
            )?,
            outbound_ports: parse_ports("-q/--istio-outbound-ports", &args.outbound_ports)?,
            outbound_exclude_ports: parse_ports(
                "-o/--istio-local-outbound-ports-exclude",
                &args.outbound_exclude_ports,
            )?,
            exclude_interfaces: parse_interfaces(
                "-c/--istio-exclude-interfaces",
                &args.exclude_interfaces,
            )?,
            kube_virt_interfaces: parse_interfaces(
                "-k/--kube-virt-interfaces",
                &args.kube_virt_interfaces,
            )?,
            tproxy_mark: parse_number("-t/--istio-inbound-tproxy-mark", &args.tproxy_mark)?,
            tproxy_route_table: parse_route_table(&args.tproxy_route_table)?,
            redirect_dns,
            capture_all_dns: args.capture_all_dns,
            drop_invalid,
            owner_groups: parse_owner_groups(env)?,
            ipv4_loopback: parse_loopback(env.ipv4_loopback_cidr.as_deref())?,
            dns_port: DNS_PORT,
        })
    }
}

fn refuse_unimplemented(args: &IstioIptablesArgs) -> Result<()> {
    let flags = [
        ("--run-validation", &args.run_validation),
        ("--iptables-probe-port", &args.iptables_probe_port),
        ("--probe-timeout", &args.probe_timeout),
        ("--network-namespace", &args.network_namespace),
        ("--cni-mode", &args.cni_mode),
        ("--native-nftables", &args.native_nftables),
        ("--force-iptables-version", &args.force_iptables_version),
        ("--force-legacy-iptables", &args.force_legacy_iptables),
        ("--iptables-trace-logging", &args.iptables_trace_logging),
        ("--host-nsenter-exec", &args.host_nsenter_exec),
        ("--dual-stack", &args.dual_stack),
        ("--log_as_json", &args.log_as_json),
    ];
    for (flag, value) in flags {
        if let Some(value) = value {
            return Err(invalid(flag, value, not_implemented(flag)));
        }
    }
    if let Some((name, value)) = args.env.unimplemented.first() {
        let flag = UNIMPLEMENTED_VARIABLES
            .iter()
            .chain([&INBOUND_TPROXY_MARK])
            .find(|(n, _)| n == name)
            .map_or("", |(_, f)| *f);
        let why = match *name {
            "INBOUND_INTERCEPTION_MODE" | "INBOUND_TPROXY_MARK" => format!(
                "{name} is not read by rustmesh (some Istio releases read it in place of {flag}); \
                 set {flag} or its variable ISTIO_{name}"
            ),
            _ => not_implemented(flag),
        };
        return Err(invalid(name, value, why));
    }
    Ok(())
}

fn not_implemented(flag: &str) -> String {
    let hint = match flag {
        "--dual-stack" => {
            " (IPv6 rules follow --ipv6: auto programs them when the pod has a global IPv6 address)"
        }
        "--log_as_json" => " (logs are text; set RUST_LOG for levels)",
        "--network-namespace" => " (run it inside the pod's network namespace)",
        "--force-iptables-version" | "--force-legacy-iptables" => {
            " (rustmesh picks iptables-nft or iptables-legacy by the rules already in the pod's \
             tables)"
        }
        _ => "",
    };
    format!("{flag} is an Istio feature rustmesh does not implement{hint}")
}

fn env_bool(name: &'static str, value: &str) -> Result<bool> {
    parse_go_bool(value).map_err(|reason| invalid(name, value, reason))
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidFlag {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Items of a comma-separated list, trimmed; empty items (`"a,,b"`, `""`) are skipped.
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn parse_port(flag: &'static str, value: &str) -> Result<u16> {
    let item = value.trim();
    if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            flag,
            value,
            format!("{item:?} is not a port number"),
        ));
    }
    match item.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(invalid(
            flag,
            value,
            format!("port {item} is out of range (1-65535)"),
        )),
    }
}

fn parse_ports(flag: &'static str, list: &str) -> Result<Vec<u16>> {
    items(list)
        .map(|item| parse_port(flag, item).map_err(|e| with_value(e, list)))
        .collect()
}

fn parse_number(flag: &'static str, value: &str) -> Result<u32> {
    let item = value.trim();
    if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(flag, value, "not a decimal number"));
    }
    item.parse::<u32>()
        .map_err(|_| invalid(flag, value, "out of range (0-4294967295)"))
}

/// A routing table id other than the kernel's own (0 unspec, 253 default, 254 main, 255 local).
fn parse_route_table(value: &str) -> Result<u32> {
    const FLAG: &str = "-r/--istio-inbound-tproxy-route-table";
    match parse_number(FLAG, value)? {
        0 | 253..=255 => Err(invalid(
            FLAG,
            value,
            "tables 0, 253, 254 and 255 are the kernel's own; pick another (Istio's is 133)",
        )),
        table => Ok(table),
    }
}

/// Linux interface names: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
fn parse_interfaces(flag: &'static str, list: &str) -> Result<Vec<String>> {
    items(list)
        .map(|name| {
            let ok = name.len() <= 15
                && name != "."
                && name != ".."
                && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
            if ok {
                Ok(name.to_string())
            } else {
                Err(invalid(
                    flag,
                    list,
                    format!("{name:?} is not an interface name (at most 15 characters, no '/', ':' or spaces)"),
                ))
            }
        })
        .collect()
}

fn parse_ids(flag: &'static str, list: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = items(list)
        .map(|item| {
            item.parse::<u32>()
                .map_err(|_| invalid(flag, list, format!("{item:?} is not a numeric id")))
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Err(invalid(flag, list, "at least one id is needed"));
    }
    Ok(ids)
}

fn lookup_user(name: &str) -> Result<u32> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(invalid(
            "ENVOY_USER",
            name,
            "no such user; set -u/--proxy-uid instead",
        )),
        Err(e) => Err(invalid(
            "ENVOY_USER",
            name,
            format!("could not look the user up: {e}"),
        )),
    }
}

/// Group names or gids, as Istio's `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]` take them. Names are
/// resolved to gids when the rules are made ([`resolve_group`]).
fn parse_owner_groups(env: &CaptureEnv) -> Result<OwnerGroups> {
    let list = |name: &'static str, value: &str| -> Result<Vec<String>> {
        value
            .split(',')
            .filter(|g| !g.is_empty())
            .map(|g| {
                let g = g.trim();
                if g.is_empty() || g.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
                    Err(invalid(
                        name,
                        value,
                        format!("{g:?} is not a group name or id"),
                    ))
                } else {
                    Ok(g.to_string())
                }
            })
            .collect()
    };
    match env.owner_groups.as_deref() {
        None | Some("*") => Ok(OwnerGroups::AllExcept(list(
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
            env.owner_groups_exclude.as_deref().unwrap_or(""),
        )?)),
        Some(include) => {
            let groups = list("ISTIO_OUTBOUND_OWNER_GROUPS", include)?;
            if groups.len() > MAX_OWNER_GROUPS {
                return Err(invalid(
                    "ISTIO_OUTBOUND_OWNER_GROUPS",
                    include,
                    format!(
                        "number of owner groups whose outgoing traffic should be redirected to Envoy cannot exceed {MAX_OWNER_GROUPS}, got {}",
                        groups.len()
                    ),
                ));
            }
            if env.owner_groups_exclude.is_some() {
                return Err(invalid(
                    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                    env.owner_groups_exclude.as_deref().unwrap_or_default(),
                    "only applies when ISTIO_OUTBOUND_OWNER_GROUPS is `*` (or unset)",
                ));
            }
            Ok(OwnerGroups::Only(groups))
        }
    }
}

/// The gid of `group` (a number, or a name looked up in the group database); `variable` names
/// where it came from, for errors.
pub fn resolve_group(variable: &'static str, group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(invalid(
            variable,
            group,
            "no such group in this container's group database",
        )),
        Err(e) => Err(invalid(
            variable,
            group,
            format!("could not look the group up: {e}"),
        )),
    }
}

/// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: an IPv4 loopback range with a mask of 8 to 32 bits.
fn parse_loopback(value: Option<&str>) -> Result<IpNet> {
    const NAME: &str = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR";
    let Some(value) = value else {
        return Ok("127.0.0.1/32".parse().expect("a valid CIDR"));
    };
    let net: IpNet = value
        .parse()
        .map_err(|_| invalid(NAME, value, "not a CIDR (like 127.0.0.1/8)"))?;
    match net {
        IpNet::V4(v4) if v4.addr().is_loopback() => {
            if (8..=32).contains(&v4.prefix_len()) {
                Ok(net.trunc())
            } else {
                Err(invalid(
                    NAME,
                    value,
                    format!(
                        "expected the mask in range [8, 32]; found {}",
                        v4.prefix_len()
                    ),
                ))
            }
        }
        _ => Err(invalid(
            NAME,
            value,
            "expected an IPv4 loopback address (127.0.0.0/8)",
        )),
    }
}

/// Parses `10.0.0.0/8,fd00::/8` (a bare address means that one host). Host bits are cleared, as
/// iptables does, so the rules read back from `iptables-save` exactly as generated.
fn parse_cidrs(flag: &'static str, list: &str) -> Result<Vec<IpNet>> {
    items(list)
        .map(|item| {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(addr) => IpNet::from(addr),
                    Err(_) => {
                        return Err(invalid(flag, list, format!("{item:?} is not a CIDR")));
                    }
                },
            };
            Ok(net.trunc())
        })
        .collect()
}

/// Reports the whole list as the value, so the message shows what the user typed.
fn with_value(err: Error, list: &str) -> Error {
    match err {
        Error::InvalidFlag { flag, reason, .. } => Error::InvalidFlag {
            flag,
            value: list.to_string(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut IstioIptablesArgs)) -> IstioIptablesArgs {
        let mut args = IstioIptablesArgs::default();
        f(&mut args);
        args
    }

    fn error_of(args: IstioIptablesArgs) -> String {
        CaptureConfig::try_from(&args)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn defaults_are_istios_injected_arguments() {
        let cfg = CaptureConfig::default();
        assert_eq!(cfg.outbound_port, 15001);
        assert_eq!(cfg.inbound_port, 15006);
        assert_eq!(cfg.tunnel_port, 15008);
        assert_eq!(cfg.proxy_uids, vec![1337]);
        assert_eq!(cfg.proxy_gids, vec![1337]);
        assert_eq!(cfg.outbound, OutboundCapture::All);
        assert!(cfg.outbound_exclude_cidrs.is_empty());
        assert_eq!(cfg.inbound, InboundCapture::All);
        assert_eq!(cfg.inbound_exclude_ports, vec![15090, 15021, 15020]);
        assert!(cfg.outbound_exclude_ports.is_empty());
        assert!(cfg.redirect_dns);
        assert_eq!(cfg.dns_port, 15053);
    }

    #[test]
    fn gid_defaults_to_uid() {
        let cfg =
            CaptureConfig::try_from(&args(|a| a.proxy_uid = Some("1000,1001".into()))).unwrap();
        assert_eq!(cfg.proxy_gids, vec![1000, 1001]);
        let cfg = CaptureConfig::try_from(&args(|a| a.proxy_gid = Some("7".into()))).unwrap();
        assert_eq!(cfg.proxy_uids, vec![1337]);
        assert_eq!(cfg.proxy_gids, vec![7]);
    }

    #[test]
    fn lists_are_trimmed_and_empty_means_none() {
        let cfg = CaptureConfig::try_from(&args(|a| {
            a.inbound_ports = " 80, 8080 ,".into();
            a.outbound_cidrs = "".into();
            a.outbound_exclude_cidrs = "10.1.2.3/8, 192.168.0.7,fd00::1/64".into();
        }))
        .unwrap();
        assert_eq!(cfg.inbound, InboundCapture::Ports(vec![80, 8080]));
        assert_eq!(cfg.outbound, OutboundCapture::Cidrs(vec![]));
        let excluded: Vec<String> = cfg
            .outbound_exclude_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(excluded, ["10.0.0.0/8", "192.168.0.7/32", "fd00::/64"]);
    }

    #[test]
    fn bad_port_names_the_flag() {
        let msg = error_of(args(|a| a.envoy_port = "abc".into()));
        assert!(
            msg.contains("-p/--envoy-port") && msg.contains("not a port number"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.inbound_capture_port = "70000".into()));
        assert!(
            msg.contains("-z/--inbound-capture-port") && msg.contains("out of range"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.inbound_capture_port = "0".into()));
        assert!(msg.contains("out of range"), "{msg}");
        let msg = error_of(args(|a| a.envoy_port = "-1".into()));
        assert!(msg.contains("not a port number"), "{msg}");
    }

    #[test]
    fn bad_port_in_a_list_names_the_flag_and_shows_the_list() {
        let msg = error_of(args(|a| a.inbound_exclude_ports = "15090,99999".into()));
        assert!(msg.contains("-d/--istio-local-exclude-ports"), "{msg}");
        assert!(
            msg.contains("\"15090,99999\"") && msg.contains("99999 is out of range"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.outbound_exclude_ports = "http".into()));
        assert!(
            msg.contains("-o/--istio-local-outbound-ports-exclude"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.inbound_ports = "80,x".into()));
        assert!(msg.contains("-b/--istio-inbound-ports"), "{msg}");
    }

    #[test]
    fn bad_cidr_names_the_flag() {
        let msg = error_of(args(|a| a.outbound_cidrs = "10.0.0.0/33".into()));
        assert!(
            msg.contains("-i/--istio-service-cidr") && msg.contains("not a CIDR"),
            "{msg}"
        );
        let msg = error_of(args(|a| {
            a.outbound_exclude_cidrs = "10.0.0.0/8,nope".into()
        }));
        assert!(
            msg.contains("-x/--istio-service-exclude-cidr") && msg.contains("\"nope\""),
            "{msg}"
        );
        let msg = error_of(args(|a| a.outbound_exclude_cidrs = "*".into()));
        assert!(msg.contains("-x/--istio-service-exclude-cidr"), "{msg}");
    }

    #[test]
    fn modes() {
        let tproxy =
            CaptureConfig::try_from(&args(|a| a.inbound_interception_mode = "TPROXY".into()));
        assert_eq!(tproxy.unwrap().mode, InterceptionMode::Tproxy);
        for redirect in ["REDIRECT", ""] {
            let cfg =
                CaptureConfig::try_from(&args(|a| a.inbound_interception_mode = redirect.into()));
            assert_eq!(cfg.unwrap().mode, InterceptionMode::Redirect);
        }
        let msg = error_of(args(|a| a.inbound_interception_mode = "tproxy".into()));
        assert!(
            msg.contains("-m/--istio-inbound-interception-mode") && msg.contains("unknown mode"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.inbound_interception_mode = "NONE".into()));
        assert!(msg.contains("NONE means no capture"), "{msg}");
    }

    fn env(pairs: &[(&str, &str)]) -> IstioIptablesArgs {
        let mut a = IstioIptablesArgs::default();
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        a.read_environment(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        });
        a
    }

    #[test]
    fn dns_capture_follows_flag_then_istio_meta_dns_capture_then_redirect_dns() {
        assert!(
            CaptureConfig::default().redirect_dns,
            "rustmesh's default is on"
        );
        let off = |a: IstioIptablesArgs| !CaptureConfig::try_from(&a).unwrap().redirect_dns;
        assert!(off(env(&[("REDIRECT_DNS", "false")])));
        assert!(off(env(&[
            ("ISTIO_META_DNS_CAPTURE", "false"),
            ("REDIRECT_DNS", "true")
        ])));
        assert!(!off(env(&[
            ("ISTIO_META_DNS_CAPTURE", "True"),
            ("REDIRECT_DNS", "0")
        ])));
        let mut flag_wins = env(&[("ISTIO_META_DNS_CAPTURE", "true")]);
        flag_wins.redirect_dns = Some(false);
        assert!(off(flag_wins));
        let msg = error_of(env(&[("ISTIO_META_DNS_CAPTURE", "yes")]));
        assert!(
            msg.contains("ISTIO_META_DNS_CAPTURE") && msg.contains("not a boolean"),
            "{msg}"
        );
    }

    #[test]
    fn drop_invalid_follows_flag_then_invalid_drop_then_drop_invalid() {
        assert!(!CaptureConfig::default().drop_invalid);
        let on = |a: IstioIptablesArgs| CaptureConfig::try_from(&a).unwrap().drop_invalid;
        assert!(on(env(&[("INVALID_DROP", "true")])));
        assert!(on(env(&[("DROP_INVALID", "1")])));
        assert!(!on(env(&[
            ("INVALID_DROP", "false"),
            ("DROP_INVALID", "true")
        ])));
        let msg = error_of(env(&[("DROP_INVALID", "on")]));
        assert!(msg.contains("DROP_INVALID"), "{msg}");
    }

    #[test]
    fn owner_groups_include_exclude_and_their_limits() {
        let groups =
            |pairs: &[(&str, &str)]| CaptureConfig::try_from(&env(pairs)).map(|c| c.owner_groups);
        assert_eq!(groups(&[]).unwrap(), OwnerGroups::AllExcept(vec![]));
        assert_eq!(
            groups(&[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp")]).unwrap(),
            OwnerGroups::AllExcept(vec!["888".into(), "ftp".into()])
        );
        assert_eq!(
            groups(&[("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202")]).unwrap(),
            OwnerGroups::Only(vec!["java".into(), "202".into()])
        );
        // Set but empty: no group is captured (Istio reads it so).
        assert_eq!(
            groups(&[("ISTIO_OUTBOUND_OWNER_GROUPS", "")]).unwrap(),
            OwnerGroups::Only(vec![])
        );
        let many = (0..65).map(|g| g.to_string()).collect::<Vec<_>>().join(",");
        let msg = groups(&[("ISTIO_OUTBOUND_OWNER_GROUPS", &many)])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot exceed 64, got 65"), "{msg}");
        let msg = groups(&[
            ("ISTIO_OUTBOUND_OWNER_GROUPS", "java"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "ftp"),
        ])
        .unwrap_err()
        .to_string();
        assert!(msg.contains("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"), "{msg}");
        assert_eq!(
            resolve_group("ISTIO_OUTBOUND_OWNER_GROUPS", "202").unwrap(),
            202
        );
        assert_eq!(
            resolve_group("ISTIO_OUTBOUND_OWNER_GROUPS", "root").unwrap(),
            0
        );
        let msg = resolve_group("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "no-such-group-here")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE") && msg.contains("no such group"),
            "{msg}"
        );
    }

    #[test]
    fn ipv4_loopback_cidr_is_validated_as_istio_does() {
        let lb = |v: &str| {
            CaptureConfig::try_from(&env(&[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", v)]))
                .map(|c| c.ipv4_loopback.to_string())
        };
        assert_eq!(
            CaptureConfig::default().ipv4_loopback.to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(lb("127.0.0.1/8").unwrap(), "127.0.0.0/8");
        for (bad, why) in [
            ("10.0.0.1/32", "loopback"),
            ("127.0.0.1/7", "[8, 32]"),
            ("127.0.0.1", "not a CIDR"),
            ("::1/128", "loopback"),
        ] {
            let msg = lb(bad).unwrap_err().to_string();
            assert!(
                msg.contains("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR") && msg.contains(why),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn interfaces_marks_and_tables_are_checked() {
        let cfg = CaptureConfig::try_from(&args(|a| {
            a.exclude_interfaces = "eth1, net-2".into();
            a.kube_virt_interfaces = "k6t-eth0".into();
            a.outbound_ports = "32000,31000".into();
        }))
        .unwrap();
        assert_eq!(cfg.exclude_interfaces, ["eth1", "net-2"]);
        assert_eq!(cfg.kube_virt_interfaces, ["k6t-eth0"]);
        assert_eq!(cfg.outbound_ports, [32000, 31000]);
        assert_eq!((cfg.tproxy_mark, cfg.tproxy_route_table), (1337, 133));
        let msg = error_of(args(|a| {
            a.exclude_interfaces = "a-very-long-interface".into()
        }));
        assert!(msg.contains("-c/--istio-exclude-interfaces"), "{msg}");
        let msg = error_of(args(|a| a.kube_virt_interfaces = "eth0/1".into()));
        assert!(msg.contains("-k/--kube-virt-interfaces"), "{msg}");
        let msg = error_of(args(|a| a.outbound_ports = "80,http".into()));
        assert!(msg.contains("-q/--istio-outbound-ports"), "{msg}");
        let msg = error_of(args(|a| a.tproxy_mark = "0x539".into()));
        assert!(msg.contains("-t/--istio-inbound-tproxy-mark"), "{msg}");
        let msg = error_of(args(|a| a.tproxy_route_table = "254".into()));
        assert!(
            msg.contains("-r/--istio-inbound-tproxy-route-table"),
            "{msg}"
        );
    }

    #[test]
    fn unimplemented_istio_flags_and_variables_are_refused_by_name() {
        let msg = error_of(args(|a| a.cni_mode = Some("true".into())));
        assert!(
            msg.contains("--cni-mode") && msg.contains("does not implement"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.run_validation = Some("true".into())));
        assert!(msg.contains("--run-validation"), "{msg}");
        let msg = error_of(env(&[("NATIVE_NFTABLES", "true")]));
        assert!(
            msg.contains("NATIVE_NFTABLES") && msg.contains("--native-nftables"),
            "{msg}"
        );
        // A variable that asks for nothing is fine.
        assert!(
            CaptureConfig::try_from(&env(&[("CNI_MODE", "false"), ("DUAL_STACK", "")])).is_ok()
        );
        let msg = error_of(args(|a| a.reconcile = Some(false)));
        assert!(msg.contains("--reconcile"), "{msg}");
        assert!(CaptureConfig::try_from(&args(|a| a.force_apply = Some(true))).is_ok());
    }

    /// Every variable Istio's istio-iptables reads that rustmesh does not: each flag's variable
    /// (its name in capitals, as Istio's `BindEnv` derives it), the flags' second names, and
    /// the variables of other Istio releases. Set, each is refused by name, never ignored.
    #[test]
    fn istio_variables_rustmesh_does_not_read_are_refused_by_name() {
        for (name, value, says) in [
            (
                "FORCE_IPTABLES_VERSION",
                "nft",
                "--force-iptables-version is an Istio feature",
            ),
            (
                "FORCE_IPTABLES_BINARY",
                "legacy",
                "--force-iptables-version is an Istio feature",
            ),
            (
                "FORCE_LEGACY_IPTABLES",
                "true",
                "--force-legacy-iptables is an Istio feature",
            ),
            (
                "IPTABLES_TRACE_LOGGING",
                "1",
                "--iptables-trace-logging is an Istio feature",
            ),
            (
                "HOST_NSENTER_EXEC",
                "true",
                "--host-nsenter-exec is an Istio feature",
            ),
            (
                "ISTIO_AGENT_DUAL_STACK",
                "true",
                "--dual-stack is an Istio feature",
            ),
            (
                "INBOUND_INTERCEPTION_MODE",
                "TPROXY",
                "in place of -m/--istio-inbound-interception-mode); set \
                 -m/--istio-inbound-interception-mode or its variable \
                 ISTIO_INBOUND_INTERCEPTION_MODE",
            ),
            (
                "INBOUND_TPROXY_MARK",
                "7",
                "set -t/--istio-inbound-tproxy-mark or its variable ISTIO_INBOUND_TPROXY_MARK",
            ),
            // A value-taking variable is refused even as "false".
            ("FORCE_IPTABLES_BINARY", "false", "--force-iptables-version"),
            ("NETWORK_NAMESPACE", "false", "--network-namespace"),
        ] {
            let msg = error_of(env(&[(name, value)]));
            assert!(
                msg.contains(name) && msg.contains(&format!("{value:?}")) && msg.contains(says),
                "{name}={value}: {msg}"
            );
        }
        // Switches set to false, and empty variables, ask for nothing.
        for name in [
            "FORCE_LEGACY_IPTABLES",
            "IPTABLES_TRACE_LOGGING",
            "HOST_NSENTER_EXEC",
        ] {
            assert!(
                CaptureConfig::try_from(&env(&[(name, "false")])).is_ok(),
                "{name}"
            );
        }
        assert!(CaptureConfig::try_from(&env(&[("INBOUND_INTERCEPTION_MODE", "")])).is_ok());
        // The flags, by Istio's names.
        let msg = error_of(args(|a| a.force_iptables_version = Some("nft".into())));
        assert!(msg.contains("--force-iptables-version"), "{msg}");
        let msg = error_of(args(|a| a.force_legacy_iptables = Some("true".into())));
        assert!(msg.contains("--force-legacy-iptables"), "{msg}");
        let msg = error_of(args(|a| a.iptables_trace_logging = Some("true".into())));
        assert!(msg.contains("--iptables-trace-logging"), "{msg}");
        let msg = error_of(args(|a| a.host_nsenter_exec = Some("true".into())));
        assert!(msg.contains("--host-nsenter-exec"), "{msg}");
    }

    /// The flags parse from a command line as Istio's do (`--flag` alone means true).
    #[test]
    fn istio_flag_names_parse_and_are_refused() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: IstioIptablesArgs,
        }
        use clap::Parser as _;
        for (argv, flag) in [
            (
                &["x", "--force-iptables-version", "nft"][..],
                "--force-iptables-version",
            ),
            (
                &["x", "--force-iptables-version=legacy"][..],
                "--force-iptables-version",
            ),
            (
                &["x", "--force-legacy-iptables"][..],
                "--force-legacy-iptables",
            ),
            (
                &["x", "--iptables-trace-logging"][..],
                "--iptables-trace-logging",
            ),
            (
                &["x", "--host-nsenter-exec=true"][..],
                "--host-nsenter-exec",
            ),
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let msg = error_of(cli.args);
            assert!(
                msg.contains(flag) && msg.contains("does not implement"),
                "{argv:?}: {msg}"
            );
        }
    }

    #[test]
    fn envoy_user_names_the_default_uid() {
        let cfg = CaptureConfig::try_from(&env(&[("ENVOY_USER", "root")])).unwrap();
        assert_eq!(cfg.proxy_uids, [0]);
        let msg = error_of(env(&[("ENVOY_USER", "no-such-user-here")]));
        assert!(msg.contains("ENVOY_USER"), "{msg}");
        let mut flag_wins = env(&[("ENVOY_USER", "no-such-user-here")]);
        flag_wins.proxy_uid = Some("7".into());
        assert_eq!(CaptureConfig::try_from(&flag_wins).unwrap().proxy_uids, [7]);
    }

    #[test]
    fn bad_ids_name_the_flag() {
        let msg = error_of(args(|a| a.proxy_uid = Some("istio-proxy".into())));
        assert!(
            msg.contains("-u/--proxy-uid") && msg.contains("not a numeric id"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.proxy_gid = Some("".into())));
        assert!(
            msg.contains("-g/--proxy-gid") && msg.contains("at least one id"),
            "{msg}"
        );
    }
}
