//! Parsers for the small string values users write in annotations and settings:
//! Kubernetes quantities, port lists, CIDR lists, interface names and yes/no flags.
//!
//! Each returns a message naming what is wrong, so that the caller can turn it into a warning
//! (annotations), a refusal (the traffic annotations, [`crate::traffic`]) or a setting error
//! (ConfigMap). The `istio_*` parsers read lists exactly as Istio's injector validates them
//! (`pkg/kube/inject/validate.go`), and their messages start with Istio's text.

use std::net::IpAddr;

/// Checks a Kubernetes resource quantity (`100m`, `128Mi`, `1.5`, `2e3`, `1Gi`), as the API server
/// would accept it for `resources.requests`/`limits`. Negative quantities are refused.
pub fn check_quantity(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not a Kubernetes quantity (examples: 100m, 0.5, 128Mi, 1Gi)");
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    // The number: digits, optionally one '.', at least one digit overall.
    let num_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_len);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let ok_suffix = match suffix {
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.len() <= 3 && exp.bytes().all(|b| b.is_ascii_digit())
        }
        // "n" and "u" are valid quantities but meaningless for CPU/memory of a proxy; the API
        // server accepts them, so do we.
        "n" | "u" => true,
        _ => false,
    };
    if ok_suffix { Ok(()) } else { Err(bad()) }
}

/// Parses a comma-separated list of TCP ports (`"8080, 9090"`). Empty entries are ignored.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(p) if p > 0 => out.push(p),
            _ => return Err(format!("{part:?} is not a port number (1-65535)")),
        }
    }
    Ok(out)
}

/// Istio's port list (`parsePorts` of its injector): the whole value trimmed, then split on
/// `,`; each item trimmed and read as a decimal number. An empty value is no port; an empty item
/// (`"80,"`, `"80,,443"`) is an error, as in Istio. Stricter than Istio: port 0 is refused, as
/// the capture step (`proxy istio-iptables`) refuses it, so that a pod is not admitted whose
/// `istio-init` can only fail.
///
/// The error is Istio's `failed parsing port '<item>': ` (the item as written) followed by why.
pub fn istio_ports(s: &str) -> Result<Vec<u16>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|item| {
            let digits = item.trim();
            let port = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u16>().ok())
                .flatten()
                .filter(|p| *p > 0);
            port.ok_or_else(|| {
                format!("failed parsing port '{item}': {digits:?} is not a port number (1-65535)")
            })
        })
        .collect()
}

/// Istio's CIDR list (`validateCIDRList` of its injector): split on `,` with no trimming, each
/// item a prefix as Go's `netip.ParsePrefix` reads one (an address, `/`, the prefix length in
/// decimal without sign or leading zero). An empty value is no range; a bare address, an empty
/// item or a space is an error, as in Istio.
///
/// The error is Istio's `failed parsing cidr '<item>': ` followed by why.
pub fn istio_cidrs(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    for item in s.split(',') {
        parse_prefix(item).map_err(|why| format!("failed parsing cidr '{item}': {why}"))?;
    }
    Ok(())
}

/// One prefix as Go's `netip.ParsePrefix` reads it: `10.0.0.0/8`, `fd00::/8`. Host bits may be
/// set (`10.1.2.3/8`), as Go allows.
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, bits)) = s.rsplit_once('/') else {
        return Err("no '/' (a range needs its prefix length, like 10.1.2.3/32)".to_owned());
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let canonical = bits.bytes().all(|b| b.is_ascii_digit())
        && !bits.is_empty()
        && (bits == "0" || !bits.starts_with('0'));
    match bits.parse::<u8>() {
        Ok(n) if canonical && n <= max => Ok((ip, n)),
        _ if canonical => Err(format!(
            "prefix length {bits} is out of range (0-{max} for {})",
            if ip.is_ipv4() { "IPv4" } else { "IPv6" }
        )),
        _ => Err(format!("bad prefix length {bits:?} after the '/'")),
    }
}

/// A list of network interface names (`excludeInterfaces`, `kubevirtInterfaces`,
/// `reroute-virtual-interfaces`), split on `,`. Istio does not check these; rustmesh refuses what
/// Linux would (`dev_valid_name`): an empty name, more than 15 bytes (`IFNAMSIZ` - 1), `.` or
/// `..`, a `/`, `:`, whitespace or control character. An empty value is no interface.
///
/// The error is `failed parsing interface '<item>': ` followed by why.
pub fn interface_names(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    for name in s.split(',') {
        let why = if name.is_empty() {
            Some("an interface name is not empty".to_owned())
        } else if name.len() > 15 {
            Some(format!(
                "{} bytes, more than the 15 of a Linux interface name",
                name.len()
            ))
        } else if name == "." || name == ".." {
            Some("not a Linux interface name".to_owned())
        } else {
            name.chars()
                .find(|c| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control())
                .map(|c| format!("{c:?} is not allowed in a Linux interface name"))
        };
        if let Some(why) = why {
            return Err(format!("failed parsing interface '{name}': {why}"));
        }
    }
    Ok(())
}

/// Istio's reading of `sidecar.istio.io/inject`: `y`, `yes`, `true`, `on` enable; `n`, `no`,
/// `false`, `off` disable (case-insensitive). Anything else is `None`.
pub fn parse_flag(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "on" => Some(true),
        "n" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Joins ports with commas, as `istio-iptables` wants them.
pub fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "100m", "0.5", "1", "2", "128Mi", "1Gi", "1.5Gi", "2e3", "1E+2", "500k", "+1", ".5",
        ] {
            assert!(check_quantity(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "", "abc", "1.2.3", "-1", "12MB", "1 Gi", "Gi", "1e", "1ee3", ".",
        ] {
            assert!(check_quantity(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_quantity("12MB").unwrap_err().contains("12MB"));
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("8080, 9090,").unwrap(), vec![8080, 9090]);
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("70000").unwrap_err().contains("70000"));
    }

    /// Istio's `parsePorts`: the value and each item trimmed, an empty item an error.
    #[test]
    fn istio_port_lists() {
        assert_eq!(istio_ports(" 80 , 443 ").unwrap(), [80, 443]);
        assert_eq!(istio_ports("080").unwrap(), [80]);
        assert_eq!(istio_ports("").unwrap(), Vec::<u16>::new());
        assert_eq!(istio_ports("  ").unwrap(), Vec::<u16>::new());
        for (bad, item) in [
            ("x", "x"),
            ("80,", ""),
            ("80,,443", ""),
            ("80, http", " http"),
            ("65536", "65536"),
            ("+80", "+80"),
            ("-1", "-1"),
            ("*", "*"),
            ("0", "0"),
        ] {
            let e = istio_ports(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("failed parsing port '{item}': ")),
                "{bad:?}: {e}"
            );
        }
    }

    /// Go's `netip.ParsePrefix`, item by item, nothing trimmed.
    #[test]
    fn istio_cidr_lists() {
        for ok in [
            "",
            "10.0.0.0/8",
            "10.0.0.0/8,172.16.0.0/12,fd00::/8",
            "10.1.2.3/8",
            "0.0.0.0/0",
            "::/0",
            "::ffff:10.0.0.0/104",
            "10.96.0.1/32",
        ] {
            assert!(istio_cidrs(ok).is_ok(), "{ok:?}: {:?}", istio_cidrs(ok));
        }
        for (bad, item, why) in [
            ("foo", "foo", "no '/'"),
            ("10.1.2.3", "10.1.2.3", "no '/'"),
            ("*", "*", "no '/'"),
            ("10.0.0.0/8,", "", "no '/'"),
            (
                "10.0.0.0/8, 10.1.0.0/16",
                " 10.1.0.0/16",
                "not an IP address",
            ),
            ("10.0.0/8", "10.0.0/8", "not an IP address"),
            ("010.0.0.0/8", "010.0.0.0/8", "not an IP address"),
            ("fe80::1%eth0/64", "fe80::1%eth0/64", "not an IP address"),
            ("10.0.0.0/33", "10.0.0.0/33", "out of range (0-32 for IPv4)"),
            ("fd00::/129", "fd00::/129", "out of range (0-128 for IPv6)"),
            ("10.0.0.0/08", "10.0.0.0/08", "bad prefix length"),
            ("10.0.0.0/+8", "10.0.0.0/+8", "bad prefix length"),
            ("10.0.0.0/", "10.0.0.0/", "bad prefix length"),
            ("10.0.0.0/8 ", "10.0.0.0/8 ", "bad prefix length"),
        ] {
            let e = istio_cidrs(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("failed parsing cidr '{item}': ")) && e.contains(why),
                "{bad:?}: {e}"
            );
        }
    }

    /// Linux's `dev_valid_name`, and no empty item.
    #[test]
    fn interface_name_lists() {
        for ok in [
            "",
            "eth0",
            "eth0,net1",
            "k6t-eth0",
            "veth+",
            "a23456789012345",
        ] {
            assert!(interface_names(ok).is_ok(), "{ok:?}");
        }
        for (bad, item) in [
            ("eth0,", ""),
            (",eth0", ""),
            ("eth0, net1", " net1"),
            ("a234567890123456", "a234567890123456"),
            ("..", ".."),
            ("a/b", "a/b"),
            ("eth0:1", "eth0:1"),
            ("et\th", "et\th"),
        ] {
            let e = interface_names(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("failed parsing interface '{item}': ")),
                "{bad:?}: {e}"
            );
        }
        assert!(interface_names("eth\u{0}").is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(parse_flag("TRUE"), Some(true));
        assert_eq!(parse_flag("yes"), Some(true));
        assert_eq!(parse_flag("off"), Some(false));
        assert_eq!(parse_flag("maybe"), None);
    }
}
