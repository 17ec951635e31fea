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

/// Command-line flags of `proxy istio-iptables`, compatible with the arguments Istio's injector
/// gives its `istio-init` container.
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
          default_value_t = INBOUND_CAPTURE_PORT.to_string())]
    pub inbound_capture_port: String,

    /// Tunnel (HBONE) port; inbound traffic to it is never redirected.
    #[arg(short = 'e', long = "inbound-tunnel-port", value_name = "PORT",
          default_value_t = TUNNEL_PORT.to_string())]
    pub inbound_tunnel_port: String,

    /// Comma-separated uids whose traffic is never redirected (the proxy's).
    #[arg(short = 'u', long = "proxy-uid", value_name = "UIDS",
          default_value_t = PROXY_UID.to_string())]
    pub proxy_uid: String,

    /// Comma-separated gids whose traffic is never redirected (default: the value of -u).
    #[arg(short = 'g', long = "proxy-gid", value_name = "GIDS")]
    pub proxy_gid: Option<String>,

    /// Inbound interception mode: REDIRECT (TPROXY is not supported yet).
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        value_name = "MODE",
        default_value = "REDIRECT"
    )]
    pub inbound_interception_mode: String,

    /// Outbound destinations to capture: `*` for all, or comma-separated CIDRs; empty for none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        value_name = "CIDRS",
        default_value = "*"
    )]
    pub outbound_cidrs: String,

    /// Outbound destinations never captured: comma-separated CIDRs.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub outbound_exclude_cidrs: String,

    /// Inbound ports to capture: `*` for all, or comma-separated ports; empty for none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        value_name = "PORTS",
        default_value = "*"
    )]
    pub inbound_ports: String,

    /// Inbound ports never captured when -b is `*`: comma-separated ports.
    #[arg(short = 'd', long = "istio-local-exclude-ports", value_name = "PORTS",
          default_value_t = default_excluded_inbound_ports())]
    pub inbound_exclude_ports: String,

    /// Outbound ports never captured: comma-separated ports.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        value_name = "PORTS",
        default_value = ""
    )]
    pub outbound_exclude_ports: String,

    /// Redirect DNS (UDP and TCP port 53) of everything but the proxy to 127.0.0.1:15053.
    /// `--redirect-dns=false` turns it off.
    #[arg(long = "redirect-dns", value_name = "BOOL", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub redirect_dns: bool,

    /// IPv6 rules: `auto` applies them when the pod has a global IPv6 address.
    #[arg(long = "ipv6", value_name = "WHEN", value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// Print the rules in iptables-restore format and apply nothing.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,

    /// Remove the capture rules and chains instead of installing them.
    #[arg(long = "cleanup", visible_alias = "remove")]
    pub cleanup: bool,

    /// Accepted for compatibility with Istio's injected arguments, and ignored (use RUST_LOG).
    #[arg(long = "log_output_level", value_name = "LEVELS")]
    pub log_output_level: Option<String>,
}

impl Default for IstioIptablesArgs {
    fn default() -> Self {
        Self {
            envoy_port: OUTBOUND_CAPTURE_PORT.to_string(),
            inbound_capture_port: INBOUND_CAPTURE_PORT.to_string(),
            inbound_tunnel_port: TUNNEL_PORT.to_string(),
            proxy_uid: PROXY_UID.to_string(),
            proxy_gid: None,
            inbound_interception_mode: "REDIRECT".into(),
            outbound_cidrs: "*".into(),
            outbound_exclude_cidrs: String::new(),
            inbound_ports: "*".into(),
            inbound_exclude_ports: default_excluded_inbound_ports(),
            outbound_exclude_ports: String::new(),
            redirect_dns: true,
            ipv6: Ipv6Mode::Auto,
            dry_run: false,
            cleanup: false,
            log_output_level: None,
        }
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
    /// `-i`.
    pub outbound: OutboundCapture,
    /// `-x`.
    pub outbound_exclude_cidrs: Vec<IpNet>,
    /// `-b`.
    pub inbound: InboundCapture,
    /// `-d`.
    pub inbound_exclude_ports: Vec<u16>,
    /// `-o`.
    pub outbound_exclude_ports: Vec<u16>,
    /// `--redirect-dns`: DNS goes to [`CaptureConfig::dns_port`] on localhost.
    pub redirect_dns: bool,
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
        match args.inbound_interception_mode.as_str() {
            "REDIRECT" | "" => {}
            "TPROXY" => {
                return Err(invalid(
                    "-m/--istio-inbound-interception-mode",
                    &args.inbound_interception_mode,
                    "TPROXY interception is not supported yet; use REDIRECT",
                ));
            }
            _ => {
                return Err(invalid(
                    "-m/--istio-inbound-interception-mode",
                    &args.inbound_interception_mode,
                    "unknown mode; the modes are REDIRECT and TPROXY",
                ));
            }
        }

        let proxy_uids = parse_ids("-u/--proxy-uid", &args.proxy_uid)?;
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

        Ok(Self {
            outbound_port: parse_port("-p/--envoy-port", &args.envoy_port)?,
            inbound_port: parse_port("-z/--inbound-capture-port", &args.inbound_capture_port)?,
            tunnel_port: parse_port("-e/--inbound-tunnel-port", &args.inbound_tunnel_port)?,
            proxy_uids,
            proxy_gids,
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
            outbound_exclude_ports: parse_ports(
                "-o/--istio-local-outbound-ports-exclude",
                &args.outbound_exclude_ports,
            )?,
            redirect_dns: args.redirect_dns,
            dns_port: DNS_PORT,
        })
    }
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
        let cfg = CaptureConfig::try_from(&args(|a| a.proxy_uid = "1000,1001".into())).unwrap();
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
        let msg = error_of(args(|a| a.inbound_interception_mode = "TPROXY".into()));
        assert!(
            msg.contains("-m/--istio-inbound-interception-mode"),
            "{msg}"
        );
        assert!(
            msg.contains("TPROXY interception is not supported yet"),
            "{msg}"
        );
        let msg = error_of(args(|a| a.inbound_interception_mode = "DNAT".into()));
        assert!(msg.contains("unknown mode"), "{msg}");
    }

    #[test]
    fn bad_ids_name_the_flag() {
        let msg = error_of(args(|a| a.proxy_uid = "istio-proxy".into()));
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
