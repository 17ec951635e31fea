//! The capture step, `proxy istio-iptables`: what Istio's `istio-init` container does.
//!
//! It programs the pod's tables so that the app's TCP connections, outbound and inbound, are
//! redirected to the sidecar (15001 and 15006; inbound by TPROXY with `-m TPROXY`) and its DNS
//! to the sidecar's DNS proxy (15053), while the sidecar's own traffic (uid/gid 1337) is left
//! alone. See [`rules::tables`] for the rules and `proxy/README.md` ("Traffic capture") for the
//! user's view.

pub mod apply;
pub mod config;
pub mod rules;

use std::io::Write;
use std::net::IpAddr;

pub use apply::{Netfilter, SystemNetfilter, TproxyRoute};
pub use config::{
    CaptureConfig, InboundCapture, InterceptionMode, Ipv6Mode, IstioIptablesArgs, OutboundCapture,
    OwnerGroups,
};
pub use rules::{Family, Host, TableName, Tables, tables};

use crate::{Error, Result};

/// Where the nameservers DNS capture follows are read from.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Runs `proxy istio-iptables` with the programs on `PATH` and this process's environment;
/// `out` receives the `--dry-run` output.
pub fn run(args: &IstioIptablesArgs, out: &mut dyn Write) -> Result<()> {
    let mut args = args.clone();
    args.read_environment(|name| std::env::var(name).ok());
    run_with(
        &args,
        &SystemNetfilter,
        &|| read_resolv_conf(RESOLV_CONF),
        out,
    )
}

/// The most of `/etc/resolv.conf` that is read (a real one is a few hundred bytes).
pub const RESOLV_CONF_LIMIT: u64 = 64 * 1024;

fn read_resolv_conf(path: &str) -> Result<String> {
    use std::io::Read as _;
    let error = |source| Error::ConfigRead {
        path: path.into(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(RESOLV_CONF_LIMIT + 1).read_to_string(&mut text))
        .map_err(error)?;
    if text.len() as u64 > RESOLV_CONF_LIMIT {
        return Err(error(std::io::Error::other(format!(
            "larger than {RESOLV_CONF_LIMIT} bytes"
        ))));
    }
    Ok(text)
}

/// [`run`] with another [`Netfilter`] and `resolv.conf`.
pub fn run_with(
    args: &IstioIptablesArgs,
    nf: &dyn Netfilter,
    resolv_conf: &dyn Fn() -> Result<String>,
    out: &mut dyn Write,
) -> Result<()> {
    if let Some(levels) = &args.log_output_level {
        tracing::info!(
            "ignoring --log_output_level={levels} (an Istio flag); set RUST_LOG instead"
        );
    }
    // Every flag and variable is checked before anything is read or applied.
    let mut cfg = CaptureConfig::try_from(args)?;

    if args.cleanup {
        let (families, lenient_v6) = match args.ipv6 {
            Ipv6Mode::Never => (vec![Family::V4], false),
            Ipv6Mode::Always => (Family::ALL.to_vec(), false),
            // Rules may be left from a run that saw an address that is gone: look anyway.
            Ipv6Mode::Auto => (Family::ALL.to_vec(), true),
        };
        let documents = apply::cleanup_documents(nf, &families, lenient_v6)?;
        for (family, document) in &documents {
            if args.dry_run {
                writeln!(
                    out,
                    "# {} cleanup, for `{} --noflush`:",
                    family.name(),
                    family.restore_program()
                )
                .and_then(|()| out.write_all(document.as_bytes()))
                .map_err(Error::Output)?;
            } else if args.skip_rule_apply {
                tracing::info!(family = family.name(), "--skip-rule-apply: nothing removed");
            } else {
                nf.restore(*family, document)?;
                tracing::info!(family = family.name(), "capture rules removed");
            }
        }
        return Ok(());
    }

    // Group names become gids, as iptables prints them (and an unknown name is an error now,
    // not at restore time).
    resolve_owner_groups(&mut cfg.owner_groups)?;
    let host = Host {
        nameservers: if cfg.redirect_dns && !cfg.capture_all_dns {
            rules::nameservers(&resolv_conf()?)
        } else {
            Vec::new()
        },
    };
    if cfg.redirect_dns && !rules::dns_capture_active(&cfg, &host) {
        tracing::warn!(
            "DNS capture is on, but {RESOLV_CONF} names no nameserver and --capture-all-dns is off: DNS is not captured"
        );
    }

    if args.dry_run {
        let with_v6 = args.ipv6 != Ipv6Mode::Never;
        return out
            .write_all(dry_run(&cfg, &host, with_v6).as_bytes())
            .map_err(Error::Output);
    }

    let with_v6 = match args.ipv6 {
        Ipv6Mode::Always => true,
        Ipv6Mode::Never => false,
        Ipv6Mode::Auto => has_global_ipv6()?,
    };
    let mut all = vec![tables(&cfg, Family::V4, &host)];
    if with_v6 {
        all.push(tables(&cfg, Family::V6, &host));
    }
    if args.skip_rule_apply {
        tracing::info!("--skip-rule-apply: the flags are valid; nothing was applied");
        return Ok(());
    }
    apply::install(nf, &all, tproxy_route(&cfg))
}

/// TPROXY mode with some inbound capture needs the policy route that delivers marked packets.
pub fn tproxy_route(cfg: &CaptureConfig) -> Option<TproxyRoute> {
    let captures_inbound = match &cfg.inbound {
        InboundCapture::All => true,
        InboundCapture::Ports(ports) => !ports.is_empty(),
    };
    (cfg.mode == InterceptionMode::Tproxy && captures_inbound).then_some(TproxyRoute {
        mark: cfg.tproxy_mark,
        table: cfg.tproxy_route_table,
    })
}

fn resolve_owner_groups(groups: &mut OwnerGroups) -> Result<()> {
    let (variable, list) = match groups {
        OwnerGroups::AllExcept(list) => ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", list),
        OwnerGroups::Only(list) => ("ISTIO_OUTBOUND_OWNER_GROUPS", list),
    };
    for group in list.iter_mut() {
        *group = config::resolve_group(variable, group)?.to_string();
    }
    Ok(())
}

/// The `--dry-run` output: the IPv4 document, then (unless `--ipv6=never`) the IPv6 one.
pub fn dry_run(cfg: &CaptureConfig, host: &Host, with_v6: bool) -> String {
    let mut text = String::from(
        "# proxy istio-iptables --dry-run: nothing was applied. A real run sends each document to\n\
         # `*-restore --noflush` in one transaction per table, after deleting the rules and chains of a previous run.\n\
         # IPv4, for `iptables-restore --noflush`:\n",
    );
    text.push_str(&tables(cfg, Family::V4, host).render());
    if with_v6 {
        text.push_str(
            "# IPv6, for `ip6tables-restore --noflush` (applied when the pod has a global IPv6 address, or with --ipv6=always):\n",
        );
        text.push_str(&tables(cfg, Family::V6, host).render());
    }
    if let Some(route) = tproxy_route(cfg) {
        text.push_str(&format!(
            "# then, for each family: ip rule add fwmark {} lookup {}; ip route replace local default dev lo table {}\n",
            route.mark, route.table, route.table
        ));
    }
    text
}

/// Whether this network namespace has an IPv6 address other than loopback and link-local.
fn has_global_ipv6() -> Result<bool> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::Interfaces(e.into()))?;
    Ok(addrs
        .filter_map(|ifa| ifa.address?.as_sockaddr_in6().map(|sin6| sin6.ip()))
        .any(|ip| is_global_v6(&IpAddr::V6(ip))))
}

fn is_global_v6(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unspecified() && !v6.is_unicast_link_local(),
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_resolv_conf() -> Result<String> {
        panic!("resolv.conf must not be read here")
    }

    #[test]
    fn dry_run_shows_both_families_unless_ipv6_is_off() {
        let cfg = CaptureConfig::default();
        let host = Host {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
        };
        let both = dry_run(&cfg, &host, true);
        assert_eq!(both.matches("*nat").count(), 2);
        assert_eq!(both.matches("*raw").count(), 2);
        assert!(both.contains("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"));
        assert!(both.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"));
        assert!(both.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN"));
        let v4 = dry_run(&cfg, &host, false);
        assert_eq!(v4.matches("*nat").count(), 1);
        assert!(!v4.contains("::6/128"));
        assert!(!v4.contains("ip rule"));
    }

    #[test]
    fn global_ipv6_excludes_loopback_and_link_local() {
        assert!(is_global_v6(&"fd00::2".parse().unwrap()));
        assert!(is_global_v6(&"2001:db8::1".parse().unwrap()));
        assert!(!is_global_v6(&"::1".parse().unwrap()));
        assert!(!is_global_v6(&"fe80::1".parse().unwrap()));
        assert!(!is_global_v6(&"10.0.0.1".parse().unwrap()));
    }

    struct Untouchable;

    impl Netfilter for Untouchable {
        fn save(&self, _: Family) -> Result<String> {
            panic!("a bad flag must stop the run before iptables is read")
        }
        fn restore(&self, _: Family, _: &str) -> Result<()> {
            panic!("a bad flag must stop the run before anything is applied")
        }
        fn add_ipv6_passthrough_address(&self) -> Result<()> {
            panic!("a bad flag must stop the run before anything is applied")
        }
        fn add_tproxy_route(&self, _: Family, _: u32, _: u32) -> Result<()> {
            panic!("a bad flag must stop the run before anything is applied")
        }
    }

    #[test]
    fn bad_flags_apply_nothing() {
        let args = IstioIptablesArgs {
            envoy_port: "x".into(),
            ..IstioIptablesArgs::default()
        };
        let err = run_with(&args, &Untouchable, &no_resolv_conf, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("-p/--envoy-port"));
        let args = IstioIptablesArgs {
            cleanup: true,
            inbound_ports: "1,2,x".into(),
            ..IstioIptablesArgs::default()
        };
        assert!(run_with(&args, &Untouchable, &no_resolv_conf, &mut Vec::new()).is_err());
        let mut args = IstioIptablesArgs {
            dry_run: true,
            ..IstioIptablesArgs::default()
        };
        args.env.owner_groups_exclude = Some("no-such-group-here".into());
        let err =
            run_with(&args, &Untouchable, &|| Ok(String::new()), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("no such group"), "{err}");
    }

    #[test]
    fn dry_run_touches_nothing_and_follows_resolv_conf() {
        let args = IstioIptablesArgs {
            dry_run: true,
            ..IstioIptablesArgs::default()
        };
        let mut out = Vec::new();
        run_with(
            &args,
            &Untouchable,
            &|| Ok("nameserver 10.96.0.10\n".into()),
            &mut out,
        )
        .unwrap();
        let printed = String::from_utf8(out).unwrap();
        let host = Host {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
        };
        assert_eq!(printed, dry_run(&CaptureConfig::default(), &host, true));
        assert!(printed.contains(
            "-A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"
        ));
        // DNS off, or capture-all: resolv.conf is not read.
        for f in [
            |a: &mut IstioIptablesArgs| a.redirect_dns = Some(false),
            |a: &mut IstioIptablesArgs| a.capture_all_dns = true,
        ] {
            let mut args = args.clone();
            f(&mut args);
            run_with(&args, &Untouchable, &no_resolv_conf, &mut Vec::new()).unwrap();
        }
    }

    #[test]
    fn resolv_conf_is_read_up_to_its_limit() {
        let dir = std::env::temp_dir().join(format!("rustmesh-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, "nameserver 10.96.0.10\n").unwrap();
        assert_eq!(
            read_resolv_conf(small.to_str().unwrap()).unwrap(),
            "nameserver 10.96.0.10\n"
        );
        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; RESOLV_CONF_LIMIT as usize + 1]).unwrap();
        let err = read_resolv_conf(big.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("larger than 65536 bytes") && err.contains("big"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tproxy_dry_run_names_the_policy_route() {
        let args = IstioIptablesArgs {
            dry_run: true,
            inbound_interception_mode: "TPROXY".into(),
            tproxy_route_table: "200".into(),
            ..IstioIptablesArgs::default()
        };
        let mut out = Vec::new();
        run_with(&args, &Untouchable, &|| Ok(String::new()), &mut out).unwrap();
        let printed = String::from_utf8(out).unwrap();
        assert!(printed.contains("*mangle"), "{printed}");
        assert!(
            printed.contains("ip rule add fwmark 1337 lookup 200"),
            "{printed}"
        );
    }
}
