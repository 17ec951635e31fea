//! Parsers for the small string values users write in annotations and settings:
//! Kubernetes quantities (checked, and compared exactly), port lists, CIDR lists, interface
//! names, Kubernetes names and yes/no flags.
//!
//! Each returns a message naming what is wrong, so that the caller can turn it into a warning
//! (annotations), a refusal (the traffic annotations, [`crate::traffic`]) or a setting error
//! (ConfigMap). The `istio_*` parsers read lists exactly as Istio's injector validates them
//! (`pkg/kube/inject/validate.go`), and their messages start with Istio's text.

use std::net::IpAddr;

use serde_json::Value;

/// Checks a Kubernetes resource quantity (`100m`, `128Mi`, `1.5`, `2e3`, `1Gi`), as the API server
/// would accept it for `resources.requests`/`limits`. Negative quantities are refused.
pub fn check_quantity(s: &str) -> Result<(), String> {
    parse_quantity(s).map(|_| ())
}

/// A non-negative Kubernetes quantity as an exact number: `digits` x 10^`exp10` x 2^`exp2`, so
/// that `100m`, `0.1` and `1e-1` compare equal, and `1Gi` is `1073741824` exactly (no
/// floating point: a request equal to its limit must never read as more).
#[derive(Clone, Debug)]
pub struct Quantity {
    /// Decimal digits, most significant first, without leading zeros (empty: zero).
    digits: Vec<u8>,
    exp10: i64,
    exp2: i64,
}

/// Parses a Kubernetes quantity (the grammar of `resource.ParseQuantity`: a decimal number with
/// an optional `+`, then a binary (`Ki`..`Ei`), decimal (`n`, `u`, `m`, `k`, `M`..`E`) or
/// exponent (`e3`, `E-2`) suffix). Negative quantities are refused.
pub fn parse_quantity(s: &str) -> Result<Quantity, String> {
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
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let mut exp10 = -i64::try_from(frac.len()).map_err(|_| bad())?;
    let mut exp2 = 0;
    match suffix {
        "" => {}
        // "n" and "u" are valid quantities but meaningless for CPU/memory of a proxy; the API
        // server accepts them, so do we.
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let (negative, digits) = match exp.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, exp.strip_prefix('+').unwrap_or(exp)),
            };
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            let n: i64 = digits.parse().map_err(|_| bad())?;
            exp10 += if negative { -n } else { n };
        }
        _ => return Err(bad()),
    }
    let first = digits.iter().position(|d| *d != 0).unwrap_or(digits.len());
    Ok(Quantity {
        digits: digits[first..].to_vec(),
        exp10,
        exp2,
    })
}

impl Quantity {
    /// Whether the quantity is zero.
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// Compares two quantities by value, exactly.
    pub fn cmp_value(&self, other: &Quantity) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self.is_zero(), other.is_zero()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        // Both as whole numbers over the common scale 10^min(exp10) x 2^min(exp2).
        let exp10 = self.exp10.min(other.exp10);
        let exp2 = self.exp2.min(other.exp2);
        let a = self.scaled(exp10, exp2);
        let b = other.scaled(exp10, exp2);
        a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
    }

    /// The digits of `self / (10^exp10 x 2^exp2)`, which must be whole (both at most self's).
    fn scaled(&self, exp10: i64, exp2: i64) -> Vec<u8> {
        let mut d = self.digits.clone();
        let zeros = usize::try_from(self.exp10 - exp10).unwrap_or(0);
        d.resize(d.len() + zeros, 0);
        for _ in 0..(self.exp2 - exp2) {
            // Doubling, least significant digit first.
            let mut carry = 0;
            for digit in d.iter_mut().rev() {
                let v = *digit * 2 + carry;
                *digit = v % 10;
                carry = v / 10;
            }
            if carry > 0 {
                d.insert(0, carry);
            }
        }
        d
    }
}

/// Go's `strconv.ParseBool`, which Istio's injector validates its boolean annotations with:
/// `1`, `t`, `T`, `TRUE`, `true`, `True` and `0`, `f`, `F`, `FALSE`, `false`, `False`; nothing
/// else (no spaces, no `yes`).
pub fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The first field of `input` (not `null`) that `output` does not have, as a dotted path from
/// `at`: `input` is a document as written, `output` the same read as a Kubernetes type and
/// written back, so the field is one Kubernetes does not know (and would drop).
pub fn unknown_field(input: &Value, output: &Value, at: &str) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_owned()
        } else {
            format!("{at}.{k}")
        }
    };
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => i.iter().find_map(|(k, v)| {
            if v.is_null() {
                return None;
            }
            match o.get(k) {
                None => Some(join(k)),
                Some(ov) => unknown_field(v, ov, &join(k)),
            }
        }),
        (Value::Array(i), Value::Array(o)) => i
            .iter()
            .zip(o)
            .enumerate()
            .find_map(|(n, (iv, ov))| unknown_field(iv, ov, &format!("{at}[{n}]"))),
        _ => None,
    }
}

/// A DNS-1123 label, as Kubernetes requires of volume names: at most 63 characters, lower-case
/// alphanumerics and `-`, starting and ending with an alphanumeric.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} is not 1 to 63 characters long"));
    }
    if !s.bytes().all(|b| ok(b) || b == b'-')
        || !ok(s.as_bytes()[0])
        || !ok(s.as_bytes()[s.len() - 1])
    {
        return Err(format!(
            "{s:?} is not a DNS-1123 label (lower-case letters, digits and '-', starting and \
             ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain, as Kubernetes requires of object names (a Secret's): at most 253
/// characters, DNS-1123 labels joined by `.` (labels here may be longer than 63, as Kubernetes
/// allows).
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| ok(b) || b == b'-')
                && ok(part.as_bytes()[0])
                && ok(part.as_bytes()[part.len() - 1])
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes object name (a DNS-1123 subdomain: at most 253 lower-case \
             letters, digits, '-' and '.')"
        ))
    }
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

    /// Quantities compare by value, exactly, whatever their suffix.
    #[test]
    fn quantities_compare_by_value() {
        use std::cmp::Ordering::*;
        let cmp = |a: &str, b: &str| {
            parse_quantity(a)
                .unwrap()
                .cmp_value(&parse_quantity(b).unwrap())
        };
        for (a, b, want) in [
            ("100m", "0.1", Equal),
            ("100m", "1e-1", Equal),
            ("1", "1000m", Equal),
            ("2", "2000m", Equal),
            ("1Gi", "1073741824", Equal),
            ("1Gi", "1024Mi", Equal),
            ("1G", "1Gi", Less),
            ("1.5Gi", "1536Mi", Equal),
            ("128Mi", "134217728", Equal),
            ("129Mi", "128Mi", Greater),
            ("250m", "2", Less),
            ("3", "2", Greater),
            ("0", "0m", Equal),
            ("0", "1n", Less),
            ("1E", "1000P", Equal),
            ("1Ei", "1E", Greater),
            ("1e3", "1k", Equal),
            ("+1", "1", Equal),
            ("0.5", ".5", Equal),
            ("1.", "1", Equal),
            ("007", "7", Equal),
            ("1e999", "1e998", Greater),
            ("1e-999", "1n", Less),
        ] {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
        assert!(parse_quantity("0.000").unwrap().is_zero());
        assert!(parse_quantity("-1").unwrap_err().contains("negative"));
    }

    /// Go's strconv.ParseBool, exactly.
    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(go_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(go_bool(f), Some(false), "{f}");
        }
        for bad in ["", "yes", "no", "tRUE", " true", "2", "on"] {
            assert_eq!(go_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kubernetes_names() {
        for ok in ["a", "certs", "my-certs-1", &"a".repeat(63)] {
            assert!(check_dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(
                check_dns_label(bad)
                    .unwrap_err()
                    .contains(&format!("{bad:?}"))
            );
        }
        for ok in ["regcred", "reg.cred-1", "a.b.c"] {
            assert!(check_dns_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Regcred", "a..b", ".a", "a.", "a b", &"a".repeat(254)] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad}");
        }
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
