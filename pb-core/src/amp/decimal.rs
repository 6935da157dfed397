//! `Decimal` values: Python's `decimal.Decimal`, precision and special values kept.

use std::fmt;
use std::str::FromStr;

use super::argument::ArgumentError;
use super::value::AmpValue;

/// An AMP `Decimal`: sign, coefficient digits and exponent, or one of the special values.
///
/// It is written exactly as Python's `str(Decimal)` writes it, so precision survives the wire:
/// `1.10` stays `1.10`, `Decimal("1.5e3")` becomes `1.5E+3`, and the special values are `Infinity`,
/// `-Infinity`, `NaN`, `-NaN`, `sNaN` and `-sNaN`.
///
/// Parsing accepts exactly what CPython's `Decimal()` accepts (its C `_decimal`, which Twisted
/// uses, not the pure-Python `_pydecimal`): the syntax (signs, `_` between digits, `inf`,
/// `nan` with a payload, surrounding whitespace) and the range of an exact value at the
/// module's limits, an adjusted exponent (the exponent of the first digit) of at most
/// `decimal.MAX_EMAX` (999 999 999 999 999 999) and an exponent of at least
/// `decimal.MIN_ETINY` (-1 999 999 999 999 999 997). Python raises `InvalidOperation` beyond
/// them (`Decimal("1E+1000000000000000000")`), and a Twisted responder that receives such a
/// value fails, so pb refuses to build one.
///
/// ```
/// use pb::amp::Decimal;
///
/// let d: Decimal = "1.10".parse().unwrap();
/// assert_eq!(d.to_string(), "1.10");
/// assert_eq!("1e2".parse::<Decimal>().unwrap().to_string(), "1E+2");
/// assert_eq!("-inf".parse::<Decimal>().unwrap().to_string(), "-Infinity");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    negative: bool,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// Coefficient digits without leading zeros (`"0"` for zero) and the exponent.
    Finite {
        coefficient: String,
        exponent: i64,
    },
    Infinity,
    /// Quiet NaN with its diagnostic payload digits (may be empty).
    NaN(String),
    /// Signalling NaN with its payload digits.
    SNaN(String),
}

impl Decimal {
    /// Whether the value is a quiet or signalling NaN.
    pub fn is_nan(&self) -> bool {
        matches!(self.kind, Kind::NaN(_) | Kind::SNaN(_))
    }

    /// Whether the value is positive or negative infinity.
    pub fn is_infinite(&self) -> bool {
        matches!(self.kind, Kind::Infinity)
    }

    /// Whether the sign is negative (also for `-0` and `-NaN`).
    pub fn is_sign_negative(&self) -> bool {
        self.negative
    }
}

/// CPython's `decimal.MAX_EMAX` (64-bit builds): the largest adjusted exponent.
const MAX_EMAX: i128 = 999_999_999_999_999_999;
/// CPython's `decimal.MIN_ETINY` (`MIN_EMIN - (MAX_PREC - 1)`, 64-bit builds): the smallest
/// exponent, that of the smallest subnormal.
const MIN_ETINY: i128 = -1_999_999_999_999_999_997;

fn strip_zeros(digits: &str) -> String {
    let t = digits.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// Removes `_` between digits as Python does, rejecting any other placement.
fn digits_only(s: &str) -> Option<String> {
    if s.is_empty() || s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return None;
    }
    if !s.bytes().all(|c| c.is_ascii_digit() || c == b'_') {
        return None;
    }
    Some(s.replace('_', ""))
}

impl FromStr for Decimal {
    type Err = ArgumentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ArgumentError::invalid("Decimal", text.as_bytes());
        let s = text.trim_matches(|c: char| c.is_whitespace());
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, s.get(1..).unwrap_or("")),
            Some(b'+') => (false, s.get(1..).unwrap_or("")),
            _ => (false, s),
        };
        let lower = body.to_ascii_lowercase();
        if lower == "inf" || lower == "infinity" {
            return Ok(Decimal {
                negative,
                kind: Kind::Infinity,
            });
        }
        for (prefix, signalling) in [("snan", true), ("nan", false)] {
            if let Some(payload) = lower.strip_prefix(prefix) {
                let payload = if payload.is_empty() {
                    String::new()
                } else {
                    let p = strip_zeros(&digits_only(payload).ok_or_else(bad)?);
                    if p == "0" { String::new() } else { p }
                };
                let kind = if signalling {
                    Kind::SNaN(payload)
                } else {
                    Kind::NaN(payload)
                };
                return Ok(Decimal { negative, kind });
            }
        }
        let (mantissa, exp) = match body.find(['e', 'E']) {
            Some(i) => (body.get(..i).unwrap_or(""), body.get(i + 1..)),
            None => (body, None),
        };
        let mut exponent: i64 = match exp {
            None => 0,
            Some(e) => {
                let (eneg, edigits) = match e.as_bytes().first() {
                    Some(b'-') => (true, e.get(1..).unwrap_or("")),
                    Some(b'+') => (false, e.get(1..).unwrap_or("")),
                    _ => (false, e),
                };
                let v: i64 = digits_only(edigits)
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if eneg { -v } else { v }
            }
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let int = if int.is_empty() {
            String::new()
        } else {
            digits_only(int).ok_or_else(bad)?
        };
        let frac = if frac.is_empty() {
            String::new()
        } else {
            digits_only(frac).ok_or_else(bad)?
        };
        exponent = exponent
            .checked_sub(i64::try_from(frac.len()).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        let coefficient = strip_zeros(&format!("{int}{frac}"));
        // Within C decimal's limits, as Python's exact conversion checks them (zero too: a
        // zero beyond them would be clamped, which Python refuses as well).
        let adjusted = i128::from(exponent) + coefficient.len() as i128 - 1;
        if adjusted > MAX_EMAX || i128::from(exponent) < MIN_ETINY {
            return Err(bad());
        }
        Ok(Decimal {
            negative,
            kind: Kind::Finite {
                coefficient,
                exponent,
            },
        })
    }
}

impl fmt::Display for Decimal {
    /// Python's `Decimal.__str__` (to-scientific-string).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        match &self.kind {
            Kind::Infinity => f.write_str("Infinity"),
            Kind::NaN(p) => write!(f, "NaN{p}"),
            Kind::SNaN(p) => write!(f, "sNaN{p}"),
            Kind::Finite {
                coefficient,
                exponent,
            } => {
                // In `i128`, so that no exponent and digit count can overflow.
                let len = coefficient.len() as i128;
                let exponent = i128::from(*exponent);
                let leftdigits = exponent + len;
                let dotplace = if exponent <= 0 && leftdigits > -6 {
                    leftdigits
                } else {
                    1
                };
                if dotplace <= 0 {
                    write!(f, "0.{}{coefficient}", "0".repeat((-dotplace) as usize))?;
                } else if dotplace >= len {
                    write!(f, "{coefficient}{}", "0".repeat((dotplace - len) as usize))?;
                } else {
                    let (i, fr) = coefficient.split_at(dotplace as usize);
                    write!(f, "{i}.{fr}")?;
                }
                if leftdigits != dotplace {
                    write!(f, "E{:+}", leftdigits - dotplace)?;
                }
                Ok(())
            }
        }
    }
}

impl AmpValue for Decimal {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        out.extend_from_slice(self.to_string().as_bytes());
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        std::str::from_utf8(bytes)
            .map_err(|_| ArgumentError::invalid("Decimal", bytes))?
            .parse()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn python_str_forms() {
        for (input, want) in [
            ("1.10", "1.10"),
            ("-0", "-0"),
            ("1E+2", "1E+2"),
            ("1e2", "1E+2"),
            ("100", "100"),
            ("0.0000001", "1E-7"),
            ("0.000001", "0.000001"),
            ("-1.50E+3", "-1.50E+3"),
            ("-1500", "-1500"),
            ("Infinity", "Infinity"),
            ("-inf", "-Infinity"),
            ("NaN", "NaN"),
            ("-nan", "-NaN"),
            ("sNaN", "sNaN"),
            ("-sNaN", "-sNaN"),
            ("0.00", "0.00"),
            ("007.50", "7.50"),
            ("1.5e-3", "0.0015"),
            ("1_000", "1000"),
            (".5", "0.5"),
            ("5.", "5"),
            ("0E-10", "0E-10"),
            // At C decimal's limits, as CPython 3.11's `_decimal` prints them.
            ("1E+999999999999999999", "1E+999999999999999999"),
            ("0.1E+1000000000000000000", "1E+999999999999999999"),
            ("00010E+999999999999999998", "1.0E+999999999999999999"),
            ("0.00001E+1000000000000000004", "1E+999999999999999999"),
            ("0E+999999999999999999", "0E+999999999999999999"),
            ("1E-999999999999999999", "1E-999999999999999999"),
            ("1E-1999999999999999997", "1E-1999999999999999997"),
            ("0E-1999999999999999997", "0E-1999999999999999997"),
            (
                "1E-0000000000000000000000001999999999999999997",
                "1E-1999999999999999997",
            ),
            ("1E+0000000000000000000000000000000001", "1E+1"),
        ] {
            assert_eq!(
                input.parse::<Decimal>().unwrap().to_string(),
                want,
                "{input}"
            );
        }
        for bad in ["", "abc", "1e", "1.2.3", "--1", "0x1", "_1", "."] {
            assert!(bad.parse::<Decimal>().is_err(), "{bad}");
        }
    }

    /// Each of these raises `InvalidOperation` in CPython 3.11's `Decimal()` (checked against
    /// it, and against Twisted in `tests/amp_interop.rs`): beyond `MAX_EMAX` or `MIN_ETINY`.
    #[test]
    fn exponents_beyond_c_decimals_limits_are_refused_as_python_refuses_them() {
        for bad in [
            "10E+999999999999999999",
            "1E+1000000000000000000",
            "0E+1000000000000000000",
            "-0E+1000000000000000000",
            "1E-1999999999999999998",
            "10E-1999999999999999998",
            "0E-1999999999999999998",
            "0.0E-1999999999999999997",
            "1.0E-1999999999999999997",
            "100E-1999999999999999999",
            "12E9223372036854775807",
            "1E-2000000000000000000",
            "1E+99999999999999999999999999",
            "1E-99999999999999999999999999",
            "0E+99999999999999999999999",
            "1e9223372036854775808",
            "1e-9223372036854775808",
            "0.1e-9223372036854775808",
        ] {
            assert!(bad.parse::<Decimal>().is_err(), "{bad}");
        }
    }
}
