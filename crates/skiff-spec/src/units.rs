//! Compose's value formats: durations (`1m30s`), byte sizes (`512M`), CPU counts (`"0.50"`).
//!
//! Each is a newtype that reads the compose spelling (string or number, as the schema allows)
//! and writes a canonical one, so `skiff config` output reads back to the same value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// === Duration ===

/// A duration in Go's `time.ParseDuration` syntax, as compose uses: `10s`, `1m30s`, `1.5h`,
/// `500ms`, `250us`. Written back in Go's `Duration.String()` form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Duration)
    }
}

fn parse_duration(input: &str) -> Result<StdDuration, String> {
    let bad = || format!("expected a duration such as 10s or 1m30s, got {input:?}");
    let s = input.trim();
    if s == "0" {
        return Ok(StdDuration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(bad());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("{} (missing unit in {input:?})", bad())),
            _ => return Err(format!("{} (unknown unit {unit:?})", bad())),
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut value = int.checked_mul(nanos_per).ok_or_else(bad)?;
        let mut scale = nanos_per;
        for d in frac_part.bytes().take(18) {
            scale /= 10;
            value += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(bad)?;
        rest = tail;
    }
    // Go's Duration is an int64 of nanoseconds.
    if total > i64::MAX as u128 {
        return Err(format!("duration {input:?} is too long"));
    }
    Ok(StdDuration::from_nanos(total as u64))
}

impl fmt::Display for Duration {
    /// Go's `Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.as_nanos();
        if n == 0 {
            return f.write_str("0s");
        }
        if n < 1_000 {
            return write!(f, "{n}ns");
        }
        if n < 1_000_000 {
            return write!(f, "{}µs", frac(n, 1_000));
        }
        if n < 1_000_000_000 {
            return write!(f, "{}ms", frac(n, 1_000_000));
        }
        let h = n / 3_600_000_000_000;
        let m = (n / 60_000_000_000) % 60;
        let s = n % 60_000_000_000;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if h > 0 || m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{}s", frac(s, 1_000_000_000))
    }
}

/// `n / unit` as a decimal without trailing zeros.
fn frac(n: u128, unit: u128) -> String {
    let whole = n / unit;
    let rem = n % unit;
    if rem == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor::<Duration>::new(
            "a duration such as 10s or 1m30s",
        ))
    }
}

// === Bytes ===

/// A byte size as docker reads it (`RAMInBytes`): `512M`, `1.5g`, `64mb`, `1GiB`, or a plain
/// number of bytes. Multipliers are binary (1k = 1024). Written back as a number of bytes
/// (in a string).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl FromStr for Bytes {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        let bad = || format!("expected a byte size such as 512M or 1g, got {input:?}");
        let s = input.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() || num.matches('.').count() > 1 || num.ends_with('.') {
            return Err(bad());
        }
        let unit = unit.trim_start().to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(&unit);
        let mult: u64 = match unit {
            "" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            "p" => 1 << 50,
            _ => return Err(bad()),
        };
        let value: f64 = num.parse().map_err(|_| bad())?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("byte size {input:?} is too large"));
        }
        Ok(Bytes(bytes as u64))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Written as a string of bytes, as compose writes its byte sizes: the schema types some of
/// them (`deploy.resources.*.memory`) as strings only.
impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor::<Bytes>::new(
            "a byte size such as 512M or 1g",
        ))
    }
}

// === Cpus ===

/// A number of CPUs, fractional: `0.5`, `"0.50"`, `2`. Must not be negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Cpus(pub f64);

impl FromStr for Cpus {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        match input.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(Cpus(v)),
            _ => Err(format!(
                "expected a non-negative number of CPUs such as 0.5, got {input:?}"
            )),
        }
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor::<Cpus>::new("a number of CPUs such as 0.5"))
    }
}

// === Parallelism ===

/// `update_config.parallelism` / `rollback_config.parallelism`: a count (`2`, `"2"`; 0 = all
/// at once) or a percentage of the replicas (`"25%"`, 1 to 100, batches rounded up). The
/// compose-spec's schema allows a string there; a count is written back as a number, a
/// percentage as its string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Parallelism {
    Count(u32),
    Percent(u32),
}

impl FromStr for Parallelism {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(n @ 1..=100) => Ok(Parallelism::Percent(n)),
                Ok(n) => Err(format!("a percentage must be 1% to 100%, got {n}%")),
                Err(_) => Err(format!(
                    "expected a count or a percentage such as \"25%\", got {input:?}"
                )),
            };
        }
        s.parse::<u32>()
            .map(Parallelism::Count)
            .map_err(|_| format!("expected a count or a percentage such as \"25%\", got {input:?}"))
    }
}

impl fmt::Display for Parallelism {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Parallelism::Count(n) => write!(f, "{n}"),
            Parallelism::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Parallelism {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Parallelism::Count(n) => s.serialize_u32(*n),
            Parallelism::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Parallelism {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor::<Parallelism>::new(
            "a count or a percentage such as \"25%\"",
        ))
    }
}

// === shared ===

/// Reads a scalar of any type as text and parses it with `FromStr<Err = String>`.
pub(crate) struct FromStrVisitor<T> {
    expecting: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    pub(crate) fn new(expecting: &'static str) -> Self {
        FromStrVisitor {
            expecting,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<StdDuration, String> {
        s.parse::<Duration>().map(|d| d.0)
    }

    #[test]
    fn parallelism_is_a_count_or_a_percentage_of_1_to_100() {
        let p = |s: &str| s.parse::<Parallelism>();
        assert_eq!(p("2"), Ok(Parallelism::Count(2)));
        assert_eq!(p("0"), Ok(Parallelism::Count(0)));
        assert_eq!(p("25%"), Ok(Parallelism::Percent(25)));
        assert_eq!(p(" 100 %"), Ok(Parallelism::Percent(100)));
        assert_eq!(p("1%"), Ok(Parallelism::Percent(1)));
        assert!(p("0%").unwrap_err().contains("1% to 100%"));
        assert!(p("150%").unwrap_err().contains("1% to 100%, got 150%"));
        assert!(p("-1").unwrap_err().contains("a count or a percentage"));
        assert!(p("half").unwrap_err().contains("\"half\""));
        assert!(p("2.5%").is_err());
        assert_eq!(Parallelism::Percent(25).to_string(), "25%");
    }

    #[test]
    fn durations_parse_go_syntax() {
        assert_eq!(d("1m30s"), Ok(StdDuration::from_secs(90)));
        assert_eq!(d("10s"), Ok(StdDuration::from_secs(10)));
        assert_eq!(d("1.5h"), Ok(StdDuration::from_secs(5400)));
        assert_eq!(d("500ms"), Ok(StdDuration::from_millis(500)));
        assert_eq!(d("250us"), Ok(StdDuration::from_micros(250)));
        assert_eq!(d("0"), Ok(StdDuration::ZERO));
        assert_eq!(d(".5s"), Ok(StdDuration::from_millis(500)));
    }

    #[test]
    fn durations_reject_nonsense_with_the_input_named() {
        for bad in ["5 parsecs", "10", "s", "-1s", "1.2.3s", "", "1x"] {
            let e = d(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(d("9999999999h").unwrap_err().contains("too long"));
    }

    #[test]
    fn durations_print_like_go() {
        let p = |s: &str| s.parse::<Duration>().unwrap().to_string();
        assert_eq!(p("90s"), "1m30s");
        assert_eq!(p("1h"), "1h0m0s");
        assert_eq!(p("1500ms"), "1.5s");
        assert_eq!(p("2ms"), "2ms");
        assert_eq!(p("0s"), "0s");
        assert_eq!(p("1h0m0.25s"), "1h0m0.25s");
    }

    #[test]
    fn byte_sizes_read_like_docker() {
        let b = |s: &str| s.parse::<Bytes>().map(|b| b.0);
        assert_eq!(b("512M"), Ok(512 << 20));
        assert_eq!(b("512m"), Ok(512 << 20));
        assert_eq!(b("1g"), Ok(1 << 30));
        assert_eq!(b("1.5GB"), Ok(3 << 29));
        assert_eq!(b("64mb"), Ok(64 << 20));
        assert_eq!(b("1GiB"), Ok(1 << 30));
        assert_eq!(b("1024"), Ok(1024));
        assert_eq!(b("10 k"), Ok(10 << 10));
        assert!(b("lots").unwrap_err().contains("\"lots\""));
        assert!(b("-1m").is_err());
        assert!(b("99999999999p").unwrap_err().contains("too large"));
    }

    #[test]
    fn cpus_are_non_negative_decimals() {
        assert_eq!("0.50".parse::<Cpus>(), Ok(Cpus(0.5)));
        assert_eq!("2".parse::<Cpus>(), Ok(Cpus(2.0)));
        assert!("-1".parse::<Cpus>().is_err());
        assert!("half".parse::<Cpus>().is_err());
    }
}
