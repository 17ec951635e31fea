//! `proxy-config secret`: the sidecar's certificates, as istioctl prints them.
//!
//! The data is the proxy's `GET /certs` answer, in Envoy's shape ([`Certs`]):
//! `{"certificates": [{"ca_cert": [...], "cert_chain": [...]}]}`, each certificate with its
//! `path` (`default`, `ROOTCA`), `serial_number` (hex), `valid_from` and `expiration_time`
//! (RFC 3339, `2026-12-05T05:00:00Z`), and fields `rustmeshctl` only prints back with `-o json`.
//!
//! Rules (istioctl's `sdscompare` writer, padding 5):
//! - columns `RESOURCE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE`;
//! - one row per secret: the workload chain (`Cert Chain`, its first certificate, the leaf) then
//!   the trust bundle (`CA`, its first certificate), as istioctl reads the first certificate of
//!   each secret's PEM;
//! - STATUS is `ACTIVE` (the sidecar shows only certificates it holds; there is no warming);
//! - VALID CERT is `true` when now is within `[valid_from, expiration_time]`;
//! - SERIAL NUMBER is lowercase hex without leading zeros (Go's `%x` of a `big.Int`);
//! - NOT AFTER / NOT BEFORE are RFC 3339 in UTC (Go's `time.RFC3339`);
//! - no certificate at all prints istioctl's `No active or warming secrets found.`

use crate::error::Error;
use crate::table::{Table, WIDE_PADDING};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Path `rustmeshctl` asks for the certificates.
pub const CERTS_PATH: &str = "/certs";

/// What istioctl prints when a proxy holds no secret.
pub const NO_SECRETS: &str = "No active or warming secrets found.\n";

/// `GET /certs`: every certificate set the proxy holds (none before its first certificate).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Certs {
    #[serde(default)]
    pub certificates: Vec<CertificateSet>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One set: the trust bundle and the workload chain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CertificateSet {
    #[serde(default)]
    pub ca_cert: Vec<CertificateDetails>,
    #[serde(default)]
    pub cert_chain: Vec<CertificateDetails>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One certificate. `subject_alt_names`, `days_until_expiration` and anything else are kept in
/// `other` for `-o json|yaml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CertificateDetails {
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Certs {
    /// Reads a `/certs` answer; a time that is not RFC 3339 is refused, naming its field.
    pub fn from_json(origin: &str, text: &str) -> Result<Self, Error> {
        let malformed = |reason: String| Error::MalformedCerts {
            origin: origin.to_string(),
            reason,
        };
        let certs: Certs = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        for (i, set) in certs.certificates.iter().enumerate() {
            for (list, certs) in [("ca_cert", &set.ca_cert), ("cert_chain", &set.cert_chain)] {
                for (j, c) in certs.iter().enumerate() {
                    for (field, value) in [
                        ("valid_from", &c.valid_from),
                        ("expiration_time", &c.expiration_time),
                    ] {
                        if let Some(v) = value
                            && parse_rfc3339(v).is_none()
                        {
                            return Err(malformed(format!(
                                "certificates[{i}].{list}[{j}].{field}: {v:?} is not an RFC 3339 \
                                 time like 2026-12-05T05:00:00Z"
                            )));
                        }
                    }
                }
            }
        }
        Ok(certs)
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretItem {
    pub name: String,
    pub kind: &'static str,
    pub valid: bool,
    pub serial_number: String,
    pub not_after: String,
    pub not_before: String,
}

/// The rows: per certificate set, the chain's leaf (`Cert Chain`), then the bundle's first
/// certificate (`CA`).
pub fn items(certs: &Certs, now: SystemTime) -> Vec<SecretItem> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let item = |c: &CertificateDetails, kind: &'static str| {
        let not_before = c.valid_from.as_deref().and_then(parse_rfc3339);
        let not_after = c.expiration_time.as_deref().and_then(parse_rfc3339);
        SecretItem {
            name: c.path.clone(),
            kind,
            valid: matches!((not_before, not_after), (Some(b), Some(a)) if b <= now && now <= a),
            serial_number: c.serial_number.as_deref().map(go_hex).unwrap_or_default(),
            not_after: not_after.map(format_rfc3339).unwrap_or_default(),
            not_before: not_before.map(format_rfc3339).unwrap_or_default(),
        }
    };
    certs
        .certificates
        .iter()
        .flat_map(|set| {
            let chain = set.cert_chain.first().map(|c| item(c, "Cert Chain"));
            let ca = set.ca_cert.first().map(|c| item(c, "CA"));
            chain.into_iter().chain(ca)
        })
        .collect()
}

/// The secret table, or istioctl's sentence when there is no secret.
pub fn render(certs: &Certs, now: SystemTime) -> String {
    let rows = items(certs, now);
    if rows.is_empty() {
        return NO_SECRETS.to_string();
    }
    table(&rows).render()
}

/// The table of `rows`.
pub fn table(rows: &[SecretItem]) -> Table {
    let mut t = Table::new(
        WIDE_PADDING,
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
    );
    for r in rows {
        t.row(vec![
            r.name.clone(),
            r.kind.to_string(),
            "ACTIVE".to_string(),
            r.valid.to_string(),
            r.serial_number.clone(),
            r.not_after.clone(),
            r.not_before.clone(),
        ]);
    }
    t
}

/// A hex serial as Go's `%x` prints the number: lowercase, no separators, no leading zeros.
fn go_hex(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() && !hex.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let r = rest.as_bytes();
            if r.len() != 6 || r[3] != b':' {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    Some(days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset)
}

/// `2006-01-02T15:04:05Z` for seconds since the epoch (UTC).
pub fn format_rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_round_trips() {
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-12-05T05:00:00Z", 1_796_446_800),
            ("2000-02-29T23:59:59Z", 951_868_799),
            ("2036-01-01T00:00:00Z", 2_082_758_400),
        ] {
            assert_eq!(parse_rfc3339(text), Some(secs), "{text}");
            assert_eq!(format_rfc3339(secs), text);
        }
        assert_eq!(
            parse_rfc3339("2026-12-05T06:00:00.123+01:00"),
            Some(1_796_446_800)
        );
        for bad in [
            "Sat, 05 Dec 2026 05:00:00 +0000",
            "2026-12-05",
            "2026-13-05T05:00:00Z",
            "2026-02-30T05:00:00Z",
            "2026-12-05T05:00:00",
            "2026-12-05T05:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn serials_print_as_go_hex() {
        assert_eq!(go_hex("00:1A:2b"), "1a2b");
        assert_eq!(go_hex("0193a5"), "193a5");
        assert_eq!(go_hex("00"), "0");
        assert_eq!(go_hex(""), "");
    }

    #[test]
    fn valid_only_between_the_bounds() {
        let certs = Certs::from_json(
            "test",
            r#"{"certificates":[{"cert_chain":[{"path":"default","serial_number":"01",
                "valid_from":"2026-12-04T05:00:00Z","expiration_time":"2026-12-05T05:00:00Z"}]}]}"#,
        )
        .unwrap();
        let at = |s: &str| UNIX_EPOCH + Duration::from_secs(parse_rfc3339(s).unwrap() as u64);
        let valid = |s: &str| items(&certs, at(s))[0].valid;
        assert!(!valid("2026-12-04T04:59:59Z"));
        assert!(valid("2026-12-04T05:00:00Z"));
        assert!(valid("2026-12-05T05:00:00Z"));
        assert!(!valid("2026-12-05T05:00:01Z"));
    }

    #[test]
    fn a_certificate_without_times_is_not_valid_and_shows_blanks() {
        let certs = Certs::from_json(
            "test",
            r#"{"certificates":[{"ca_cert":[{"path":"ROOTCA","error":"unparsable"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            render(&certs, SystemTime::now()),
            "RESOURCE NAME     TYPE     STATUS     VALID CERT     SERIAL NUMBER     NOT AFTER     NOT BEFORE\n\
             ROOTCA            CA       ACTIVE     false                                          \n"
        );
    }

    #[test]
    fn a_time_in_another_format_is_refused_naming_the_field() {
        let e = Certs::from_json(
            "http://127.0.0.1:15000",
            r#"{"certificates":[{"ca_cert":[],"cert_chain":[{"path":"default",
                "valid_from":"Fri, 04 Dec 2026 05:00:00 +0000"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "the certificates from http://127.0.0.1:15000 are not in the documented /certs shape: \
             certificates[0].cert_chain[0].valid_from: \"Fri, 04 Dec 2026 05:00:00 +0000\" is not \
             an RFC 3339 time like 2026-12-05T05:00:00Z"
        );
    }

    #[test]
    fn no_certificate_is_istioctls_sentence() {
        let certs = Certs::from_json("test", r#"{"certificates": []}"#).unwrap();
        assert_eq!(render(&certs, SystemTime::now()), NO_SECRETS);
    }
}
