//! Types for the Python values serde's data model has no place for.
//!
//! Each is an ordinary serde type: through Jelly it becomes the Python value it stands for,
//! and through any other format (pb's own codec between two pb peers) it crosses as the plain
//! content named on each type.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use bytes::BytesMut;
use pb_proto::banana::{self, BananaCodec, BananaConfig, Dialect};
use pb_proto::jelly::{self, Graph, JellyConfig, Value};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::magic;

/// The longest decimal text [`BigInt`] and [`Decimal`] parse: far beyond the 448 bits Banana
/// carries (135 digits), and short enough that the quadratic parse stays cheap.
const MAX_TEXT: usize = 4096;

/// Text that is not a number of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {0} text")]
pub struct ParseError(&'static str);

/// Decimal integer text, bounded in length.
pub(super) fn parse_bigint(s: &str) -> Result<banana::BigInt, ParseError> {
    if s.len() > MAX_TEXT {
        return Err(ParseError("integer"));
    }
    s.parse().map_err(|_| ParseError("integer"))
}

/// An integer of any size Banana carries (a Python `int`).
///
/// Through Jelly it is an `int`; through pb's own codec, its decimal text. Integers that fit
/// an `i64`, `u64` or `i128` need no wrapper: pb maps those to `int` by themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BigInt(pub banana::BigInt);

/// A [`BigInt`] beyond the range of the integer type asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("integer out of range")]
pub struct BigIntRangeError;

impl From<i64> for BigInt {
    fn from(v: i64) -> Self {
        BigInt(v.into())
    }
}

impl From<i32> for BigInt {
    fn from(v: i32) -> Self {
        BigInt(i64::from(v).into())
    }
}

impl From<u32> for BigInt {
    fn from(v: u32) -> Self {
        BigInt(i64::from(v).into())
    }
}

impl From<i128> for BigInt {
    fn from(v: i128) -> Self {
        BigInt(v.into())
    }
}

impl From<u64> for BigInt {
    fn from(v: u64) -> Self {
        BigInt(v.into())
    }
}

impl From<u128> for BigInt {
    fn from(v: u128) -> Self {
        BigInt(v.into())
    }
}

impl From<banana::BigInt> for BigInt {
    fn from(v: banana::BigInt) -> Self {
        BigInt(v)
    }
}

impl TryFrom<BigInt> for i128 {
    type Error = BigIntRangeError;

    fn try_from(v: BigInt) -> Result<i128, BigIntRangeError> {
        v.0.to_i128().ok_or(BigIntRangeError)
    }
}

impl TryFrom<BigInt> for i64 {
    type Error = BigIntRangeError;

    fn try_from(v: BigInt) -> Result<i64, BigIntRangeError> {
        v.0.to_i64().ok_or(BigIntRangeError)
    }
}

impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for BigInt {
    type Err = ParseError;

    /// Optionally signed decimal digits, at most 4096 characters.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_bigint(s).map(BigInt)
    }
}

impl Serialize for BigInt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(magic::BIGINT, &self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for BigInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(magic::BIGINT, Parsed::<BigInt>(PhantomData))
    }
}

/// A Python `decimal.Decimal`: `coefficient * 10**exponent`, trailing zeros kept.
///
/// Through Jelly it is a `Decimal`; through pb's own codec, its text as Python's
/// `str(Decimal)` writes it (`"1.50"`, `"1.5E+7"`, `"0E-8"`), which [`FromStr`] reads back
/// exactly. Jelly carries no NaN, infinity or negative zero, and neither does this type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal(pub jelly::Decimal);

impl fmt::Display for Decimal {
    /// As Python's `str(Decimal)`: plain notation when the exponent is at most 0 and the
    /// number has fewer than six leading zeros after the point, else scientific notation with
    /// one digit before the point.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0.coefficient;
        let text = c.to_string();
        let digits = text.trim_start_matches('-');
        let sign = if c.is_negative() { "-" } else { "" };
        let len = i128::try_from(digits.len()).unwrap_or(i128::MAX);
        let exp = i128::from(self.0.exponent);
        let left = exp + len;
        let dot = if exp <= 0 && left > -6 { left } else { 1 };
        f.write_str(sign)?;
        if dot <= 0 {
            f.write_str("0.")?;
            for _ in 0..-dot {
                f.write_str("0")?;
            }
            f.write_str(digits)?;
        } else if dot >= len {
            // Only when dot == len: a larger dot means exp > 0, which takes dot = 1.
            f.write_str(digits)?;
        } else {
            let (int, frac) = digits.split_at(usize::try_from(dot).unwrap_or(0));
            write!(f, "{int}.{frac}")?;
        }
        if left != dot {
            write!(f, "E{:+}", left - dot)?;
        }
        Ok(())
    }
}

impl FromStr for Decimal {
    type Err = ParseError;

    /// A decimal number as Python's `Decimal(text)` reads one: optional sign, digits with an
    /// optional point, an optional exponent (`e` or `E`); surrounding whitespace is ignored.
    /// NaN and infinities are refused (Jelly cannot carry them).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        const E: ParseError = ParseError("decimal");
        let s = s.trim();
        if s.len() > MAX_TEXT {
            return Err(E);
        }
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, s.get(1..).unwrap_or("")),
            Some(b'+') => (false, s.get(1..).unwrap_or("")),
            _ => (false, s),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(at) => {
                let (m, e) = rest.split_at(at);
                let e = e.get(1..).unwrap_or("");
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E);
                }
                (m, e.parse::<i64>().map_err(|_| E)?)
            }
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
            return Err(E);
        }
        let frac_len = i64::try_from(frac.len()).map_err(|_| E)?;
        let exponent = exp.checked_sub(frac_len).ok_or(E)?;
        let mut text = String::with_capacity(int.len() + frac.len() + 1);
        if negative {
            text.push('-');
        }
        text.push_str(int);
        text.push_str(frac);
        let coefficient = text.parse::<banana::BigInt>().map_err(|_| E)?;
        Ok(Decimal(jelly::Decimal {
            coefficient,
            exponent,
        }))
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(magic::DECIMAL, &self.to_string())
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(magic::DECIMAL, Parsed::<Decimal>(PhantomData))
    }
}

/// Reads a newtype holding text that parses as `T`.
struct Parsed<T>(PhantomData<T>);

impl<'de, T: FromStr<Err = ParseError>> Visitor<'de> for Parsed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number as text")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A Python `set`: its elements, in the order sent. Through pb's own codec, a seq.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Set<T>(pub Vec<T>);

/// A Python `frozenset`: its elements, in the order sent. Through pb's own codec, a seq.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FrozenSet<T>(pub Vec<T>);

/// Reads a newtype holding a seq of `T`.
struct Elements<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for Elements<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a set")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        Vec::deserialize(d)
    }
}

impl<T: Serialize> Serialize for Set<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(magic::SET, &self.0)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Set<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(magic::SET, Elements(PhantomData))
            .map(Set)
    }
}

impl<T: Serialize> Serialize for FrozenSet<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(magic::FROZENSET, &self.0)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FrozenSet<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(magic::FROZENSET, Elements(PhantomData))
            .map(FrozenSet)
    }
}

/// Any Jelly value, as it is: a graph that keeps its sharing and cycles, its instances of any
/// tag, its `datetime`s.
///
/// Through Jelly its graph is merged into the message's (its nodes renumbered); received, it
/// takes the value where it stands and every node that value reaches. Through pb's own codec
/// it crosses as the graph's Banana bytes (Jelly under dialect `pb`), read back under the
/// default limits ([`JellyConfig::default`], [`BananaConfig::default`]); a graph those limits
/// refuse (nested deeper than 64, say) cannot be sent.
///
/// Flavors inside it stay data: a `Value::Remote(id)` is the number the peer sent, not an
/// object reference, and nothing is imported, exported or counted for it. To pass an object,
/// use an [`ObjectRef`](crate::ObjectRef) outside the `Dynamic`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dynamic(pub Graph);

impl From<Graph> for Dynamic {
    fn from(g: Graph) -> Self {
        Dynamic(g)
    }
}

impl From<Value> for Dynamic {
    fn from(v: Value) -> Self {
        Dynamic(Graph::new(v))
    }
}

/// A byte string for serde.
struct AsBytes<'a>(&'a [u8]);

impl Serialize for AsBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for Dynamic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut codec = BananaCodec::default();
        codec.set_dialect(Dialect::Pb);
        let mut bytes = BytesMut::new();
        jelly::encode(&self.0, &JellyConfig::default(), &codec, &mut bytes)
            .map_err(|e| serde::ser::Error::custom(format!("dynamic value: {e}")))?;
        s.serialize_newtype_struct(magic::DYNAMIC, &AsBytes(&bytes))
    }
}

/// Reads a newtype holding a graph's Banana bytes.
struct DynamicVisitor;

impl<'de> Visitor<'de> for DynamicVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a jelly value")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Dynamic, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// Reads a graph from its Banana bytes.
struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Dynamic;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the banana bytes of a jelly value")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Dynamic, E> {
        jelly::decode(
            v,
            &JellyConfig::default(),
            BananaConfig::default(),
            Dialect::Pb,
        )
        .map(Dynamic)
        .map_err(|e| E::custom(format!("dynamic value: {e}")))
    }
}

impl<'de> Deserialize<'de> for Dynamic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(magic::DYNAMIC, DynamicVisitor)
    }
}

/// The qualified name of Perspective Broker's base error, `pb.Error`.
const PB_ERROR: &str = "twisted.spread.pb.Error";

/// The traceback Twisted sends unless its factory is told to send real ones.
const NO_TRACEBACK: &str = "Traceback unavailable\n";

/// A failed call as Twisted reports it: a `CopyableFailure`, an instance tagged
/// `twisted.spread.pb.CopyableFailure`.
///
/// Sent, it carries the keys Twisted's own `getStateToCopy()` writes (`type` as bytes,
/// `value`, `traceback`, `parents`, and empty `frames`, `stack`, `tb`, `count`,
/// `captureVars`, `unsafeTracebacks`). Received, only `type`, `value` and `parents` are
/// required, each as `str` or `bytes`; other keys are ignored. Through pb's own codec it
/// crosses as its four fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exception's qualified class name (`type`), such as `builtins.ValueError`.
    pub type_name: String,
    /// The exception's text (`value`, Python's `str(exception)`).
    pub value: String,
    /// The remote traceback, or `"Traceback unavailable\n"` (`traceback`).
    pub traceback: String,
    /// The qualified names of the exception's class and its bases, most derived first
    /// (`parents`): what [`Failure::check`] matches, as Twisted's `Failure.check` does.
    pub parents: Vec<String>,
}

impl Failure {
    /// A failure of the exception class `type_name` (a qualified name) with `message`,
    /// deriving from `pb.Error`: its parents are `type_name`, `twisted.spread.pb.Error` and
    /// Python's `Exception`, `BaseException` and `object`.
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        let type_name = type_name.into();
        let mut parents = Vec::with_capacity(5);
        if type_name != PB_ERROR {
            parents.push(type_name.clone());
        }
        parents.extend(
            [
                PB_ERROR,
                "builtins.Exception",
                "builtins.BaseException",
                "builtins.object",
            ]
            .map(String::from),
        );
        Failure {
            type_name,
            value: message.into(),
            traceback: NO_TRACEBACK.to_owned(),
            parents,
        }
    }

    /// A `twisted.spread.pb.Error` with `message`: what a Twisted peer's callers expect of a
    /// deliberate error.
    pub fn pb_error(message: impl Into<String>) -> Self {
        Failure::new(PB_ERROR, message)
    }

    /// Whether the exception is of the class `type_name` or derives from it (as Twisted's
    /// `Failure.check`, by qualified name).
    pub fn check(&self, type_name: &str) -> bool {
        self.type_name == type_name || self.parents.iter().any(|p| p == type_name)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.type_name, self.value)
    }
}

impl std::error::Error for Failure {}

fn no_traceback() -> String {
    NO_TRACEBACK.to_owned()
}

/// A [`Failure`]'s fields under Twisted's names, borrowed for sending.
#[derive(Serialize)]
struct FailureRef<'a> {
    #[serde(rename = "type")]
    type_name: &'a str,
    value: &'a str,
    traceback: &'a str,
    parents: &'a [String],
}

/// A [`Failure`]'s fields under Twisted's names, as received.
#[derive(Deserialize)]
struct FailureState {
    #[serde(rename = "type")]
    type_name: String,
    value: String,
    #[serde(default = "no_traceback")]
    traceback: String,
    parents: Vec<String>,
}

impl Serialize for Failure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(
            magic::FAILURE,
            &FailureRef {
                type_name: &self.type_name,
                value: &self.value,
                traceback: &self.traceback,
                parents: &self.parents,
            },
        )
    }
}

/// Reads a newtype holding a [`FailureState`].
struct FailureVisitor;

impl<'de> Visitor<'de> for FailureVisitor {
    type Value = Failure;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CopyableFailure")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Failure, D::Error> {
        let s = FailureState::deserialize(d)?;
        Ok(Failure {
            type_name: s.type_name,
            value: s.value,
            traceback: s.traceback,
            parents: s.parents,
        })
    }
}

impl<'de> Deserialize<'de> for Failure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(magic::FAILURE, FailureVisitor)
    }
}
