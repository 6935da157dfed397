//! `Integer` values of any width.

use std::fmt;
use std::str::FromStr;

use super::argument::ArgumentError;
use super::value::{AmpValue, parse_integer_text};

/// An AMP `Integer` of any width, kept as canonical decimal text (`-?[0-9]+`, no leading zeros).
///
/// Use it where a Python peer may send numbers wider than 128 bits; convert with
/// [`BigInt::to_i128`] or `TryFrom`, which fail instead of wrapping.
///
/// ```
/// use pb::amp::BigInt;
///
/// let n: BigInt = "-12345678901234567890123".parse().unwrap();
/// assert_eq!(n.to_string(), "-12345678901234567890123");
/// assert!(n.to_i128().is_some());
/// assert_eq!(BigInt::from(7i64).to_string(), "7");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BigInt(String);

impl BigInt {
    /// The canonical decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as an `i128`, if it fits.
    pub fn to_i128(&self) -> Option<i128> {
        self.0.parse().ok()
    }
}

impl FromStr for BigInt {
    type Err = ArgumentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_integer_text(s.as_bytes()).map(BigInt)
    }
}

impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! bigint_from {
    ($($t:ty),*) => {$(
        impl From<$t> for BigInt {
            fn from(v: $t) -> Self {
                BigInt(v.to_string())
            }
        }

        impl TryFrom<&BigInt> for $t {
            type Error = ArgumentError;

            fn try_from(v: &BigInt) -> Result<Self, Self::Error> {
                v.0.parse().map_err(|_| ArgumentError::OutOfRange {
                    value: v.0.clone(),
                    rust_type: stringify!($t),
                })
            }
        }
    )*};
}

bigint_from!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

impl AmpValue for BigInt {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        parse_integer_text(bytes).map(BigInt)
    }
}
