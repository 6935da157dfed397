//! [`BigInt`]: the integers beyond `i64` that Banana's LONGINT and LONGNEG carry.

use std::fmt;
use std::str::FromStr;

/// An integer of any size, as a sign and a magnitude.
///
/// Banana carries integers up to 448 bits (its 64-byte prefix limit of 7-bit digits), and
/// Python sends them freely; this type holds them without a big-number dependency. It does no
/// arithmetic: it converts to and from `i64` / `i128`, decimal text, and Banana's base-128
/// digits.
///
/// The magnitude is stored **little-endian** (least significant byte first) with no trailing
/// zero bytes, and zero is never negative, so two equal integers have equal representations
/// and the derived `Eq` and `Hash` are value equality.
///
/// ```
/// # mod pb { pub use pb_proto as proto; }
/// use pb::proto::banana::BigInt;
///
/// let n: BigInt = "-36893488147419103232".parse().unwrap(); // -(2**65)
/// assert!(n.is_negative());
/// assert_eq!(n.magnitude_le(), &[0, 0, 0, 0, 0, 0, 0, 0, 2]);
/// assert_eq!(n.to_string(), "-36893488147419103232");
/// assert_eq!(n.to_i64(), None);
/// assert_eq!(BigInt::from(-5i64).to_i64(), Some(-5));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BigInt {
    negative: bool,
    magnitude: Vec<u8>,
}

/// Decimal text that is not an integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid integer text")]
pub struct ParseBigIntError;

impl BigInt {
    /// The integer `(-1)^negative * magnitude`, with `magnitude_le` little-endian; it is
    /// normalised (trailing zero bytes dropped, zero made non-negative).
    pub fn from_parts(negative: bool, magnitude_le: Vec<u8>) -> Self {
        let mut magnitude = magnitude_le;
        while magnitude.last() == Some(&0) {
            magnitude.pop();
        }
        let negative = negative && !magnitude.is_empty();
        BigInt {
            negative,
            magnitude,
        }
    }

    /// Whether the integer is below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Whether the integer is zero.
    pub fn is_zero(&self) -> bool {
        self.magnitude.is_empty()
    }

    /// The absolute value, little-endian, without trailing zero bytes (empty for zero).
    pub fn magnitude_le(&self) -> &[u8] {
        &self.magnitude
    }

    /// The number of significant bits of the absolute value (0 for zero).
    pub fn bits(&self) -> u64 {
        match self.magnitude.last() {
            None => 0,
            Some(&top) => {
                (self.magnitude.len() as u64 - 1) * 8 + u64::from(8 - top.leading_zeros() as u8)
            }
        }
    }

    /// The absolute value as a `u128`, if it fits.
    fn magnitude_u128(&self) -> Option<u128> {
        if self.magnitude.len() > 16 {
            return None;
        }
        let mut buf = [0u8; 16];
        buf.get_mut(..self.magnitude.len())?
            .copy_from_slice(&self.magnitude);
        Some(u128::from_le_bytes(buf))
    }

    /// The value as an `i64`, if it fits.
    pub fn to_i64(&self) -> Option<i64> {
        self.to_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// The value as an `i128`, if it fits.
    pub fn to_i128(&self) -> Option<i128> {
        let m = self.magnitude_u128()?;
        if self.negative {
            if m == 1u128 << 127 {
                Some(i128::MIN)
            } else {
                i128::try_from(m).ok().map(|v| -v)
            }
        } else {
            i128::try_from(m).ok()
        }
    }

    /// The magnitude's base-128 digits, least significant first, as Banana's prefix carries
    /// them (`[0]` for zero, as Twisted's `int2b128`).
    pub(crate) fn base128_digits(&self) -> Vec<u8> {
        base128_from_le(&self.magnitude)
    }

    /// The non-negative integer whose base-128 digits (least significant first, each < 128)
    /// are `digits`, negated when `negative`.
    pub(crate) fn from_base128(negative: bool, digits: &[u8]) -> Self {
        Self::from_parts(negative, regroup(digits, 7, 8))
    }

    /// Divides the magnitude by `d` in place, returning the remainder.
    fn div_rem_small(magnitude: &mut [u8], d: u32) -> u32 {
        let d = u64::from(d);
        let mut rem: u64 = 0;
        for byte in magnitude.iter_mut().rev() {
            let cur = (rem << 8) | u64::from(*byte);
            *byte = (cur / d) as u8;
            rem = cur % d;
        }
        rem as u32
    }
}

/// Base-128 digits (least significant first) of a little-endian magnitude; `[0]` for zero.
fn base128_from_le(magnitude: &[u8]) -> Vec<u8> {
    let mut out = regroup(magnitude, 8, 7);
    while out.len() > 1 && out.last() == Some(&0) {
        out.pop();
    }
    if out.is_empty() {
        out.push(0);
    }
    out
}

/// The bits of `digits` (each holding `from` bits, least significant digit first) regrouped
/// into digits of `to` bits, least significant first; a last partial digit is kept.
fn regroup(digits: &[u8], from: u32, to: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(digits.len() * from as usize / to as usize + 1);
    let (in_mask, out_mask) = ((1u32 << from) - 1, (1u32 << to) - 1);
    let mut acc: u32 = 0;
    let mut acc_bits = 0u32;
    for &d in digits {
        acc |= (u32::from(d) & in_mask) << acc_bits;
        acc_bits += from;
        while acc_bits >= to {
            out.push((acc & out_mask) as u8);
            acc >>= to;
            acc_bits -= to;
        }
    }
    if acc_bits > 0 {
        out.push((acc & out_mask) as u8);
    }
    out
}

impl From<i64> for BigInt {
    fn from(v: i64) -> Self {
        Self::from_parts(v < 0, v.unsigned_abs().to_le_bytes().to_vec())
    }
}

impl From<u64> for BigInt {
    fn from(v: u64) -> Self {
        Self::from_parts(false, v.to_le_bytes().to_vec())
    }
}

impl From<i128> for BigInt {
    fn from(v: i128) -> Self {
        Self::from_parts(v < 0, v.unsigned_abs().to_le_bytes().to_vec())
    }
}

impl From<u128> for BigInt {
    fn from(v: u128) -> Self {
        Self::from_parts(false, v.to_le_bytes().to_vec())
    }
}

impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Nine decimal digits at a time: quadratic in the length, which Banana caps at 448 bits.
        const CHUNK: u32 = 1_000_000_000;
        let mut m = self.magnitude.clone();
        let mut chunks = Vec::new();
        while m.iter().any(|&b| b != 0) {
            chunks.push(Self::div_rem_small(&mut m, CHUNK));
            while m.last() == Some(&0) {
                m.pop();
            }
        }
        let mut text = String::new();
        if self.negative {
            text.push('-');
        }
        match chunks.split_last() {
            None => text.push('0'),
            Some((top, rest)) => {
                text.push_str(&top.to_string());
                for c in rest.iter().rev() {
                    text.push_str(&format!("{c:09}"));
                }
            }
        }
        f.pad_integral(true, "", &text)
    }
}

impl FromStr for BigInt {
    type Err = ParseBigIntError;

    /// Parses optionally signed decimal digits, as Python's `int(text)` does for plain text.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (negative, digits) = match s.as_bytes() {
            [b'-', rest @ ..] => (true, rest),
            [b'+', rest @ ..] => (false, rest),
            rest => (false, rest),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(ParseBigIntError);
        }
        let mut magnitude: Vec<u8> = Vec::new();
        for &d in digits {
            // magnitude = magnitude * 10 + d
            let mut carry = u32::from(d - b'0');
            for byte in magnitude.iter_mut() {
                let cur = u32::from(*byte) * 10 + carry;
                *byte = (cur & 0xff) as u8;
                carry = cur >> 8;
            }
            while carry > 0 {
                magnitude.push((carry & 0xff) as u8);
                carry >>= 8;
            }
        }
        Ok(Self::from_parts(negative, magnitude))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_is_one_representation() {
        assert_eq!(BigInt::from_parts(true, vec![0, 0]), BigInt::from(0i64));
        assert_eq!(BigInt::from(0i64).to_string(), "0");
        assert_eq!(BigInt::from(0i64).base128_digits(), vec![0]);
        assert_eq!(BigInt::from(0i64).bits(), 0);
        assert_eq!(BigInt::from(300i64).base128_digits(), vec![0x2c, 0x02]);
        assert_eq!(BigInt::from(255i64).bits(), 8);
        assert_eq!(BigInt::from(256i64).bits(), 9);
    }

    #[test]
    fn extremes_of_i64_and_i128() {
        for v in [i64::MIN, i64::MAX, -1, 1] {
            assert_eq!(BigInt::from(v).to_i64(), Some(v));
            assert_eq!(BigInt::from(v).to_string(), v.to_string());
        }
        for v in [i128::MIN, i128::MAX] {
            assert_eq!(BigInt::from(v).to_i128(), Some(v));
            assert_eq!(BigInt::from(v).to_string(), v.to_string());
            assert_eq!(v.to_string().parse::<BigInt>().unwrap(), BigInt::from(v));
        }
        assert_eq!(BigInt::from(u128::MAX).to_i128(), None);
        // Nine-digit chunks: a remainder shifted by a byte needs more than 32 bits.
        assert_eq!(BigInt::from(1u64 << 32).to_string(), "4294967296");
        assert!("".parse::<BigInt>().is_err());
        assert!("-".parse::<BigInt>().is_err());
        assert!("1x".parse::<BigInt>().is_err());
    }

    proptest! {
        #[test]
        fn text_and_base128_round_trip(neg: bool, mag in proptest::collection::vec(any::<u8>(), 0..60)) {
            let n = BigInt::from_parts(neg, mag);
            prop_assert_eq!(n.to_string().parse::<BigInt>().unwrap(), n.clone());
            let digits = n.base128_digits();
            prop_assert!(digits.iter().all(|d| *d < 0x80));
            prop_assert_eq!(BigInt::from_base128(n.is_negative(), &digits), n);
        }

        #[test]
        fn i128_agrees(v: i128) {
            prop_assert_eq!(BigInt::from(v).to_string(), v.to_string());
            prop_assert_eq!(BigInt::from(v).to_i128(), Some(v));
        }
    }
}
