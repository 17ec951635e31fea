//! The capture step, `proxy istio-iptables`: what Istio's `istio-init` container does.
//!
//! It programs the pod's nat table so that the app's TCP connections, outbound and inbound, are
//! redirected to the sidecar (15001 and 15006) and its DNS to the sidecar's DNS proxy (15053),
//! while the sidecar's own traffic (uid/gid 1337) is left alone. See [`rules::nat_table`] for the
//! rules and `proxy/README.md` ("Traffic capture") for the user's view.

pub mod apply;
pub mod config;
pub mod rules;

use std::io::Write;
use std::net::IpAddr;

pub use apply::{Netfilter, SystemNetfilter};
pub use config::{CaptureConfig, InboundCapture, Ipv6Mode, IstioIptablesArgs, OutboundCapture};
pub use rules::{Family, NatTable, nat_table};

use crate::{Error, Result};

/// Runs `proxy istio-iptables` with the programs on `PATH`; `out` receives the `--dry-run` output.
pub fn run(args: &IstioIptablesArgs, out: &mut dyn Write) -> Result<()> {
    run_with(args, &SystemNetfilter, out)
}

/// [`run`] with another [`Netfilter`].
pub fn run_with(args: &IstioIptablesArgs, nf: &dyn Netfilter, out: &mut dyn Write) -> Result<()> {
    if let Some(levels) = &args.log_output_level {
        tracing::info!(
            "ignoring --log_output_level={levels} (an Istio flag); set RUST_LOG instead"
        );
    }
    // Every flag is checked before anything is read or applied.
    let cfg = CaptureConfig::try_from(args)?;

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
            } else {
                nf.restore(*family, document)?;
                tracing::info!(family = family.name(), "capture rules removed");
            }
        }
        return Ok(());
    }

    if args.dry_run {
        let with_v6 = args.ipv6 != Ipv6Mode::Never;
        return out
            .write_all(dry_run(&cfg, with_v6).as_bytes())
            .map_err(Error::Output);
    }

    let with_v6 = match args.ipv6 {
        Ipv6Mode::Always => true,
        Ipv6Mode::Never => false,
        Ipv6Mode::Auto => has_global_ipv6()?,
    };
    let mut tables = vec![nat_table(&cfg, Family::V4)];
    if with_v6 {
        tables.push(nat_table(&cfg, Family::V6));
    }
    apply::install(nf, &tables)
}

/// The `--dry-run` output: the IPv4 document, then (unless `--ipv6=never`) the IPv6 one.
pub fn dry_run(cfg: &CaptureConfig, with_v6: bool) -> String {
    let mut text = String::from(
        "# proxy istio-iptables --dry-run: nothing was applied. A real run sends each document to\n\
         # `*-restore --noflush` in one transaction, after deleting the jumps and chains of a previous run.\n\
         # IPv4, for `iptables-restore --noflush`:\n",
    );
    text.push_str(&nat_table(cfg, Family::V4).render());
    if with_v6 {
        text.push_str(
            "# IPv6, for `ip6tables-restore --noflush` (applied when the pod has a global IPv6 address, or with --ipv6=always):\n",
        );
        text.push_str(&nat_table(cfg, Family::V6).render());
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

    #[test]
    fn dry_run_shows_both_families_unless_ipv6_is_off() {
        let cfg = CaptureConfig::default();
        let both = dry_run(&cfg, true);
        assert_eq!(both.matches("*nat").count(), 2);
        assert!(both.contains("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"));
        assert!(both.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"));
        assert!(both.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN"));
        let v4 = dry_run(&cfg, false);
        assert_eq!(v4.matches("*nat").count(), 1);
        assert!(!v4.contains("::6/128"));
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
        fn save_nat(&self, _: Family) -> Result<String> {
            panic!("a bad flag must stop the run before iptables is read")
        }
        fn restore(&self, _: Family, _: &str) -> Result<()> {
            panic!("a bad flag must stop the run before anything is applied")
        }
        fn add_ipv6_passthrough_address(&self) -> Result<()> {
            panic!("a bad flag must stop the run before anything is applied")
        }
    }

    #[test]
    fn bad_flags_apply_nothing() {
        let args = IstioIptablesArgs {
            envoy_port: "x".into(),
            ..IstioIptablesArgs::default()
        };
        let err = run_with(&args, &Untouchable, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("-p/--envoy-port"));
        let args = IstioIptablesArgs {
            cleanup: true,
            inbound_ports: "1,2,x".into(),
            ..IstioIptablesArgs::default()
        };
        assert!(run_with(&args, &Untouchable, &mut Vec::new()).is_err());
    }

    #[test]
    fn dry_run_touches_nothing() {
        let args = IstioIptablesArgs {
            dry_run: true,
            ..IstioIptablesArgs::default()
        };
        let mut out = Vec::new();
        run_with(&args, &Untouchable, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            dry_run(&CaptureConfig::default(), true)
        );
    }
}
