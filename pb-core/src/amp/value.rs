//! Argument values and their exact Twisted encodings (`toString` / `fromString`).

use bytes::{BufMut, Bytes};

use super::argument::ArgumentError;

/// A Rust type that stands for one AMP argument type, encoded as one value.
///
/// | AMP type | Rust type |
/// |---|---|
/// | `Integer` | `i8` … `i128`, `u8` … `u128`, `isize`, `usize`, [`BigInt`](super::BigInt) |
/// | `String` | [`Bytes`] |
/// | `Unicode` | [`String`] |
/// | `Boolean` | `bool` |
/// | `Float` | `f64`, `f32` |
/// | `Decimal` | [`Decimal`](super::Decimal) |
/// | `DateTime` | [`DateTime`](super::DateTime) |
/// | `Path` | [`PathBuf`](std::path::PathBuf) |
/// | `ListOf(T)` | `Vec<T>` |
/// | `AmpList` | [`AmpList<T>`](super::AmpList) |
///
/// `Vec<u8>` is a `ListOf(Integer)`, not a `String`: use [`Bytes`] for raw bytes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an AMP argument type",
    label = "not an AMP argument type",
    note = "AMP arguments are integers, `Bytes`, `String`, `bool`, floats, `BigInt`, `Decimal`, `DateTime`, `PathBuf`, `Vec` of those, `AmpList` of `AmpFields` structs, or `Option` of any of them"
)]
pub trait AmpValue: Sized {
    /// Appends this value's wire form to `out`.
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError>;
    /// Parses a value's wire form.
    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError>;
}

/// Parses an `Integer` value into text of the form `-?[0-9]+`, as Python's `int()` would accept it:
/// surrounding whitespace, a `+` sign and single `_` between digits are allowed.
pub(crate) fn parse_integer_text(bytes: &[u8]) -> Result<String, ArgumentError> {
    let bad = || ArgumentError::invalid("Integer", bytes);
    let s = std::str::from_utf8(bytes).map_err(|_| bad())?;
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..).unwrap_or("")),
        Some(b'+') => (false, s.get(1..).unwrap_or("")),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        return Err(bad());
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    let trimmed = digits.trim_start_matches('0');
    Ok(match (trimmed.is_empty(), neg) {
        (true, _) => "0".to_string(),
        (false, true) => format!("-{trimmed}"),
        (false, false) => trimmed.to_string(),
    })
}

/// Appends `magnitude` in decimal, after a `-` if `negative`.
fn put_decimal(out: &mut Vec<u8>, negative: bool, mut magnitude: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (magnitude % 10) as u8;
        }
        magnitude /= 10;
        if magnitude == 0 || at == 0 {
            break;
        }
    }
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl AmpValue for $t {
            fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
                // Straight into `out`, without a `String` in between, and without `fmt`'s
                // machinery for anything that fits 64 bits.
                let v = i128::try_from(*self).ok();
                match v.map(|v| (v < 0, u64::try_from(v.unsigned_abs()))) {
                    Some((negative, Ok(magnitude))) => put_decimal(out, negative, magnitude),
                    _ => {
                        let _ = std::io::Write::write_fmt(out, format_args!("{self}"));
                    }
                }
                Ok(())
            }

            fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
                // The usual case, up to 18 plain digits (which cannot overflow a `u64`), is
                // read digit by digit, with no text and no normalised copy.
                let (negative, digits) = match bytes {
                    [b'-', rest @ ..] => (true, rest),
                    _ => (false, bytes),
                };
                if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
                    let magnitude = digits
                        .iter()
                        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                    let v = if negative {
                        -i128::from(magnitude)
                    } else {
                        i128::from(magnitude)
                    };
                    return <$t>::try_from(v).map_err(|_| ArgumentError::OutOfRange {
                        value: v.to_string(),
                        rust_type: stringify!($t),
                    });
                }
                // Longer plain digits need no normalised copy either; `+`, spaces, `_` and
                // errors take the careful path.
                if bytes.first().is_some_and(|b| b.is_ascii_digit() || *b == b'-')
                    && bytes.iter().skip(1).all(u8::is_ascii_digit)
                    && let Ok(v) = std::str::from_utf8(bytes).unwrap_or("").parse::<$t>()
                {
                    return Ok(v);
                }
                let text = parse_integer_text(bytes)?;
                text.parse::<$t>().map_err(|_| ArgumentError::OutOfRange {
                    value: text,
                    rust_type: stringify!($t),
                })
            }
        }
    )*};
}

integer_value!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

impl AmpValue for Bytes {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        out.extend_from_slice(self);
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
}

impl AmpValue for String {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| ArgumentError::invalid("Unicode", bytes))
    }
}

impl AmpValue for bool {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        out.extend_from_slice(if *self { b"True" } else { b"False" });
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        match bytes {
            b"True" => Ok(true),
            b"False" => Ok(false),
            _ => Err(ArgumentError::invalid("Boolean", bytes)),
        }
    }
}

/// Python's `repr(float)`: the shortest digits that read back to the same number, written in
/// positional form when the decimal exponent is in `-4..16`, otherwise as `d.ddde+XX`.
pub(crate) fn python_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` yields the same shortest round-trip digits Python uses, e.g. `-1.2345e-7`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let ndigits = digits.len() as i32;
    let decpt = exp + 1;
    if (-4 < decpt) && (decpt <= 16) {
        if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= ndigits {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - ndigits) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python's `float()` on bytes: whitespace around, `_` between digits, `inf`, `infinity` and
/// `nan` in any case.
fn parse_python_float(bytes: &[u8]) -> Result<f64, ArgumentError> {
    let bad = || ArgumentError::invalid("Float", bytes);
    let s = std::str::from_utf8(bytes).map_err(|_| bad())?;
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let cleaned: String;
    let s = if s.contains('_') {
        let chars: Vec<char> = s.chars().collect();
        let ok = chars.iter().enumerate().all(|(i, c)| {
            *c != '_'
                || (i > 0
                    && chars.get(i - 1).is_some_and(char::is_ascii_digit)
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        });
        if !ok {
            return Err(bad());
        }
        cleaned = s.replace('_', "");
        &cleaned
    } else {
        s
    };
    s.parse::<f64>().map_err(|_| bad())
}

impl AmpValue for f64 {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        out.extend_from_slice(python_float_repr(*self).as_bytes());
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        parse_python_float(bytes)
    }
}

impl AmpValue for f32 {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        f64::from(*self).encode_value(out)
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        // Narrowing is what a Python peer's double becomes in an f32; overflow gives ±inf.
        Ok(parse_python_float(bytes)? as f32)
    }
}

/// `Path`: the path as UTF-8; a path that is not UTF-8 cannot be sent.
impl AmpValue for std::path::PathBuf {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        let s = self.to_str().ok_or_else(|| ArgumentError::Invalid {
            amp_type: "Path",
            reason: format!("not utf-8: {}", self.display()),
        })?;
        out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        String::decode_value(bytes)
            .map(std::path::PathBuf::from)
            .map_err(|_| ArgumentError::invalid("Path", bytes))
    }
}

/// `ListOf(T)`: each element as a u16 big-endian length and its bytes; an empty list is empty.
impl<T: AmpValue> AmpValue for Vec<T> {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        let mut elem = Vec::new();
        for item in self {
            elem.clear();
            item.encode_value(&mut elem)?;
            let len = u16::try_from(elem.len())
                .map_err(|_| ArgumentError::ValueTooLong { len: elem.len() })?;
            out.put_u16(len);
            out.extend_from_slice(&elem);
        }
        Ok(())
    }

    fn decode_value(mut bytes: &[u8]) -> Result<Self, ArgumentError> {
        let mut items = Vec::new();
        while !bytes.is_empty() {
            let (len, rest) = match bytes {
                [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
                _ => return Err(ArgumentError::invalid("ListOf", bytes)),
            };
            let (elem, rest) = rest
                .split_at_checked(len)
                .ok_or_else(|| ArgumentError::invalid("ListOf", bytes))?;
            items.push(T::decode_value(elem)?);
            bytes = rest;
        }
        Ok(items)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (0.1, "0.1"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1.234, "1.234"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1.5e300, "1.5e+300"),
            (-2.5e-300, "-2.5e-300"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (1234.5678, "1234.5678"),
            (5e-324, "5e-324"),
        ];
        for (v, want) in cases {
            assert_eq!(python_float_repr(*v), *want, "{v:?}");
        }
    }

    #[test]
    fn float_parse_is_lenient_like_python() {
        for (s, want) in [
            ("Infinity", f64::INFINITY),
            ("-INF", f64::NEG_INFINITY),
            (" 1_000.5 ", 1000.5),
            ("1e+16", 1e16),
        ] {
            assert_eq!(f64::decode_value(s.as_bytes()).unwrap(), want);
        }
        assert!(f64::decode_value(b"NaN").unwrap().is_nan());
        assert!(f64::decode_value(b"1__0").is_err());
        assert!(f64::decode_value(b"0x10").is_err());
    }

    #[test]
    fn integer_out_of_range_is_an_error_not_a_wrong_number() {
        assert_eq!(
            i64::decode_value(b"-9223372036854775808").unwrap(),
            i64::MIN
        );
        let err = i64::decode_value(b"9223372036854775808").unwrap_err();
        assert!(matches!(err, ArgumentError::OutOfRange { .. }), "{err}");
        assert!(u8::decode_value(b"-1").is_err());
        assert_eq!(i32::decode_value(b" +1_000 ").unwrap(), 1000);
        assert!(i32::decode_value(b"0x10").is_err());
        assert!(i32::decode_value(b"").is_err());
    }

    #[test]
    fn plain_digits_and_the_careful_path_agree() {
        for (text, want) in [
            ("007", 7),
            ("-0", 0),
            ("-12", -12),
            ("+12", 12),
            ("1_2", 12),
        ] {
            assert_eq!(i64::decode_value(text.as_bytes()).unwrap(), want, "{text}");
        }
        assert_eq!(u64::decode_value(b"-0").unwrap(), 0);
        // Both sides of the short path's limit, and the bounds of a narrow type.
        assert_eq!(
            i64::decode_value(b"999999999999999999").unwrap(),
            999_999_999_999_999_999
        );
        assert_eq!(
            i64::decode_value(b"-1000000000000000000").unwrap(),
            -1_000_000_000_000_000_000
        );
        assert_eq!(i8::decode_value(b"-128").unwrap(), i8::MIN);
        assert_eq!(u8::decode_value(b"0255").unwrap(), u8::MAX);
        for (text, shown) in [("256", "256"), ("-1", "-1"), ("-0129", "-129")] {
            let err = if text == "-0129" {
                i8::decode_value(text.as_bytes()).unwrap_err()
            } else {
                u8::decode_value(text.as_bytes()).unwrap_err()
            };
            assert!(
                matches!(&err, ArgumentError::OutOfRange { value, .. } if value == shown),
                "{text}: {err}"
            );
        }
        for bad in ["-", "--1", "1-", "-_1"] {
            assert!(i64::decode_value(bad.as_bytes()).is_err(), "{bad}");
        }
        for (v, text) in [
            (i128::from(i64::MIN), "-9223372036854775808"),
            (0, "0"),
            (-7, "-7"),
            (i128::from(u64::MAX), "18446744073709551615"),
            (i128::from(u64::MAX) + 1, "18446744073709551616"),
            (i128::MIN, "-170141183460469231731687303715884105728"),
        ] {
            let mut out = Vec::new();
            v.encode_value(&mut out).unwrap();
            assert_eq!(out, text.as_bytes());
        }
        let mut out = Vec::new();
        u128::MAX.encode_value(&mut out).unwrap();
        assert_eq!(out, u128::MAX.to_string().as_bytes());
        out.clear();
        i8::MIN.encode_value(&mut out).unwrap();
        assert_eq!(out, b"-128");
    }

    #[test]
    fn boolean_is_strict() {
        assert!(bool::decode_value(b"true").is_err());
        assert!(bool::decode_value(b"True").unwrap());
    }
}
