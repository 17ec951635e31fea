//! Parsers for the small string values users write in annotations and settings:
//! Kubernetes quantities, port lists, CIDR lists and yes/no flags.
//!
//! Each returns a message naming what is wrong, so that the caller can turn it into a warning
//! (annotations) or a setting error (ConfigMap).

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

/// Parses a comma-separated list of ports or the wildcard `*` (`includeInboundPorts`).
/// Returns the normalised value to pass to `istio-iptables`.
pub fn parse_ports_or_wildcard(s: &str) -> Result<String, String> {
    if s.trim() == "*" {
        return Ok("*".to_owned());
    }
    Ok(join(&parse_ports(s)?))
}

/// Parses a comma-separated list of CIDRs (`10.0.0.0/8,fd00::/8`) or the wildcard `*`.
/// A bare address is accepted as a host route (`/32` or `/128`), as Istio accepts it.
/// Returns the normalised value to pass to `istio-iptables`.
pub fn parse_cidrs_or_wildcard(s: &str) -> Result<String, String> {
    if s.trim() == "*" {
        return Ok("*".to_owned());
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (addr, prefix) = match part.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (part, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{part:?} is not an IP range in CIDR form (like 10.0.0.0/8)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{part:?} has a bad prefix length (0-{max})")),
            },
        };
        out.push(format!("{ip}/{prefix}"));
    }
    Ok(out.join(","))
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
        assert_eq!(parse_ports_or_wildcard(" * ").unwrap(), "*");
        assert_eq!(parse_ports_or_wildcard("80 ,443").unwrap(), "80,443");
        assert_eq!(parse_ports_or_wildcard("").unwrap(), "");
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidrs_or_wildcard("10.0.0.0/8, 172.16.0.0/12,fd00::/8").unwrap(),
            "10.0.0.0/8,172.16.0.0/12,fd00::/8"
        );
        assert_eq!(parse_cidrs_or_wildcard("10.1.2.3").unwrap(), "10.1.2.3/32");
        assert_eq!(parse_cidrs_or_wildcard("*").unwrap(), "*");
        assert_eq!(parse_cidrs_or_wildcard("").unwrap(), "");
        assert!(parse_cidrs_or_wildcard("10.0.0.0/33").is_err());
        assert!(
            parse_cidrs_or_wildcard("10.0.0/8")
                .unwrap_err()
                .contains("10.0.0/8")
        );
    }

    #[test]
    fn flags() {
        assert_eq!(parse_flag("TRUE"), Some(true));
        assert_eq!(parse_flag("yes"), Some(true));
        assert_eq!(parse_flag("off"), Some(false));
        assert_eq!(parse_flag("maybe"), None);
    }
}
