//! Durations as Istio's YAML writes them: `0.5s`, `10s`, `1m`, `250ms`, `1h30m`.
//!
//! Istio accepts protobuf's `<seconds>s` form and Go's `time.ParseDuration` forms; both are read
//! here. Output is always the protobuf form (`"0.5s"`, `"60s"`), which every Istio version accepts.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, str::FromStr};

/// A non-negative duration read from Istio's string form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (expected forms like \"0.5s\", \"10s\", \"250ms\", \"1m30s\")"
)]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: s.to_string(),
            reason,
        };
        let text = s.trim();
        if text.is_empty() {
            return Err(err("empty"));
        }
        if text.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        if text == "0" {
            return Ok(Duration::ZERO);
        }
        let mut total: u128 = 0; // nanoseconds
        let mut rest = text.strip_prefix('+').unwrap_or(text);
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let nanos_per_unit: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit (use h, m, s, ms, us or ns)")),
            };
            let (int_part, frac_part) = match num.split_once('.') {
                Some((i, f)) => (i, f),
                None => (num, ""),
            };
            if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
                return Err(err("malformed number"));
            }
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| err("number too large"))?
            };
            let mut value = int
                .checked_mul(nanos_per_unit)
                .ok_or_else(|| err("number too large"))?;
            // Fraction: keep up to nanosecond precision.
            let mut scale = nanos_per_unit;
            for digit in frac_part.bytes() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                value += u128::from(digit - b'0') * scale;
            }
            total = total
                .checked_add(value)
                .ok_or_else(|| err("number too large"))?;
            rest = tail;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("number too large"))?;
        Ok(Duration(std::time::Duration::new(
            secs,
            (total % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as \"0.5s\", \"10s\", \"250ms\" or \"1m30s\"."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn reads_istio_and_go_forms() {
        assert_eq!(d("0.5s"), std::time::Duration::from_millis(500));
        assert_eq!(d("10s"), std::time::Duration::from_secs(10));
        assert_eq!(d("250ms"), std::time::Duration::from_millis(250));
        assert_eq!(d("1m30s"), std::time::Duration::from_secs(90));
        assert_eq!(d("1h"), std::time::Duration::from_secs(3600));
        assert_eq!(d("1.5m"), std::time::Duration::from_secs(90));
        assert_eq!(d("0.001s"), std::time::Duration::from_millis(1));
        assert_eq!(d("100us"), std::time::Duration::from_micros(100));
        assert_eq!(d("7ns"), std::time::Duration::from_nanos(7));
        assert_eq!(d("0"), std::time::Duration::ZERO);
        assert_eq!(d(".5s"), std::time::Duration::from_millis(500));
    }

    #[test]
    fn refuses_bad_forms_with_a_reason() {
        for bad in [
            "",
            "10",
            "s",
            "-1s",
            "1x",
            "1.2.3s",
            "abc",
            "1 s",
            "99999999999999999999999h",
        ] {
            let e = bad.parse::<Duration>().unwrap_err();
            assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
        }
        assert_eq!("10".parse::<Duration>().unwrap_err().reason, "missing unit");
        assert_eq!(
            "-1s".parse::<Duration>().unwrap_err().reason,
            "negative durations are not allowed"
        );
    }

    #[test]
    fn prints_protobuf_form_and_round_trips() {
        for (input, out) in [
            ("0.5s", "0.5s"),
            ("1m", "60s"),
            ("250ms", "0.25s"),
            ("2s", "2s"),
        ] {
            let parsed: Duration = input.parse().unwrap();
            assert_eq!(parsed.to_string(), out);
            assert_eq!(out.parse::<Duration>().unwrap(), parsed);
        }
    }
}
