//! Twisted's Banana: the s-expression byte framing under Perspective Broker, with no I/O.
//!
//! An element is a base-128 prefix (7-bit digits, least significant first, every byte below
//! `0x80`), a type byte with the high bit set, and for strings and floats a body:
//!
//! | type byte | element | prefix | body |
//! |---|---|---|---|
//! | `0x80` | list | element count | that many elements |
//! | `0x81` | int, 0 ≤ n < 2³¹ | n | |
//! | `0x82` | byte string | length | the bytes |
//! | `0x83` | negative int, −2³¹ ≤ n < 0 | −n | |
//! | `0x84` | float | none | 8 bytes, IEEE-754 big-endian |
//! | `0x85` | long int, n ≥ 2³¹ | n | |
//! | `0x86` | long negative, n < −2³¹ | −n | |
//! | `0x87` | vocabulary word (`pb` dialect) | its index in [`VOCABULARY`] | |
//!
//! [`BananaCodec`] encodes [`Element`]s into a buffer and decodes them incrementally: bytes may
//! arrive in any chunks, a partial expression is kept in the codec between calls, and only the
//! bytes of decoded elements are consumed. Twisted's limits hold and are configurable
//! ([`BananaConfig`]): at most 64 prefix bytes, strings and lists of at most 640 KiB
//! ([`SIZE_LIMIT`]). pb adds a nesting depth and a size budget per expression. Every limit is
//! checked on the prefix, before the body arrives and before anything is allocated for it.
//!
//! # What differs from Twisted
//! - Twisted limits neither nesting nor the size of an expression; pb refuses lists nested
//!   deeper than [`BananaConfig::max_depth`] and expressions over
//!   [`BananaConfig::max_expression_size`] in memory, on both sides.
//! - Every bad input is a [`BananaCodecError`]; Twisted raises `BananaError`, `KeyError` or
//!   `NotImplementedError` and drops the connection. After one, the codec decodes nothing more.
//! - The rest is Twisted's, checked against Twisted 26.10 by `tests/twisted_jelly.rs`: the
//!   same bytes encoded, the same bytes accepted (empty prefixes, a prefix before FLOAT, small
//!   values as LONGINT, large ones as INT) and refused.
//!
//! # Layout
//! - `bigint`: [`BigInt`], the integers beyond `i64` (sign and little-endian magnitude);
//! - `decode`: [`BananaCodec::decode`], the incremental decoder, and
//!   [`BananaCodec::check_expressions`], its limits checked on bytes about to be sent;
//! - `encode`: [`BananaCodec::encode`] and [`BananaCodec::encode_nested`].
//!
//! # Example
//! ```
//! # mod pb { pub use pb_proto as proto; }
//! use bytes::BytesMut;
//! use pb::proto::banana::{BananaCodec, BananaConfig, Element};
//!
//! let mut codec = BananaCodec::new(BananaConfig::default());
//! let mut wire = BytesMut::new();
//! let value = Element::from(vec![Element::from(1), Element::from(vec![Element::from(&b"hello"[..])])]);
//! codec.encode(&value, &mut wire).unwrap();
//! assert_eq!(&wire[..], b"\x02\x80\x01\x81\x01\x80\x05\x82hello");
//!
//! // Byte by byte, the same element comes out once.
//! let mut input = BytesMut::new();
//! let mut out = None;
//! for b in wire.iter() {
//!     input.extend_from_slice(&[*b]);
//!     if let Some(e) = codec.decode(&mut input).unwrap() {
//!         out = Some(e);
//!     }
//! }
//! assert_eq!(out, Some(value));
//! ```

mod bigint;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use bigint::{BigInt, ParseBigIntError};

/// Type byte of a list.
pub const LIST: u8 = 0x80;
/// Type byte of a non-negative int below 2³¹.
pub const INT: u8 = 0x81;
/// Type byte of a byte string.
pub const STRING: u8 = 0x82;
/// Type byte of a negative int of at least −2³¹.
pub const NEG: u8 = 0x83;
/// Type byte of a float.
pub const FLOAT: u8 = 0x84;
/// Type byte of an int of at least 2³¹.
pub const LONGINT: u8 = 0x85;
/// Type byte of an int below −2³¹.
pub const LONGNEG: u8 = 0x86;
/// Type byte of a vocabulary word (`pb` dialect only).
pub const VOCAB: u8 = 0x87;

/// Twisted's `SIZE_LIMIT`: the longest string and the longest list, 640 KiB.
pub const SIZE_LIMIT: usize = 640 * 1024;

/// Twisted's default prefix limit: at most 64 bytes of base-128 prefix before a type byte.
pub const PREFIX_LIMIT: usize = 64;

/// pb's default nesting depth: at most 64 lists inside each other.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// pb's default budget for one decoded expression: 64 MiB (see
/// [`BananaConfig::max_expression_size`]).
pub const DEFAULT_MAX_EXPRESSION_SIZE: usize = 64 * 1024 * 1024;

/// The `pb` dialect's vocabulary, as Twisted's `Banana.outgoingVocabulary`: word `i` is
/// `VOCABULARY[i - 1]`, sent as the prefix `i` and the type byte [`VOCAB`].
pub const VOCABULARY: [&[u8]; 31] = [
    b"None",
    b"class",
    b"dereference",
    b"reference",
    b"dictionary",
    b"function",
    b"instance",
    b"list",
    b"module",
    b"persistent",
    b"tuple",
    b"unpersistable",
    b"copy",
    b"cache",
    b"cached",
    b"remote",
    b"local",
    b"lcache",
    b"version",
    b"login",
    b"password",
    b"challenge",
    b"logged_in",
    b"not_logged_in",
    b"cachemessage",
    b"message",
    b"answer",
    b"error",
    b"decref",
    b"decache",
    b"uncache",
];

/// The word of vocabulary index `index` (1 to 31).
pub fn vocab_word(index: u64) -> Option<&'static [u8]> {
    let i = usize::try_from(index.checked_sub(1)?).ok()?;
    VOCABULARY.get(i).copied()
}

/// The vocabulary index of `word`, if it is one.
pub fn vocab_index(word: &[u8]) -> Option<u8> {
    VOCABULARY
        .iter()
        .position(|w| *w == word)
        .and_then(|i| u8::try_from(i + 1).ok())
}

/// The Banana dialect ("profile") in use, chosen in the handshake: the server offers
/// `[b"pb", b"none"]` and the client answers with the first it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// No vocabulary: every string is spelled out, and a received VOCAB element is an error.
    /// Banana starts in this dialect.
    #[default]
    None,
    /// The `pb` dialect: [`VOCABULARY`] words travel as VOCAB elements, in both directions.
    Pb,
}

impl Dialect {
    /// The dialect's name on the wire.
    pub fn name(self) -> &'static [u8] {
        match self {
            Dialect::None => b"none",
            Dialect::Pb => b"pb",
        }
    }

    /// The dialect named `name`, if we know it.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"none" => Some(Dialect::None),
            b"pb" => Some(Dialect::Pb),
            _ => None,
        }
    }

    /// The server's offer, `[b"pb", b"none"]`: the first expression on a connection, sent
    /// in the [`Dialect::None`] dialect.
    pub fn offer() -> Element {
        Element::List(vec![
            Element::Bytes(Bytes::from_static(Dialect::Pb.name())),
            Element::Bytes(Bytes::from_static(Dialect::None.name())),
        ])
    }

    /// The client's choice from a server's `offer`: the first dialect it names that we know,
    /// as Twisted's client picks it (it then sends the name as a bare string). `None` when
    /// the offer is not a list or names none we know: Twisted's client disconnects.
    pub fn choose(offer: &Element) -> Option<Dialect> {
        offer
            .as_list()?
            .iter()
            .find_map(|e| e.as_bytes().and_then(|name| Dialect::from_name(name)))
    }

    /// The dialect a client chose, as the server reads the client's first expression: a bare
    /// string naming a dialect we know. `None` otherwise: Twisted's server disconnects.
    pub fn chosen(choice: &Element) -> Option<Dialect> {
        choice.as_bytes().and_then(|name| Dialect::from_name(name))
    }
}

/// One Banana element: what Python's Banana sends and receives.
///
/// A decoded integer is an [`Element::Int`] whenever it fits an `i64` and an
/// [`Element::BigInt`] only when it does not (whichever of the four integer type bytes carried
/// it), so equal integers decode equal. A VOCAB element decodes to the [`Element::Bytes`] of its
/// word, as in Twisted; the encoder turns such bytes back into VOCAB in the `pb` dialect.
/// Equality is Rust's: a NaN float is not equal to itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    /// A list of elements (Python `list`; a `tuple` is sent the same way).
    List(Vec<Element>),
    /// An integer that fits an `i64`.
    Int(i64),
    /// An integer beyond `i64` (a decoded one never fits an `i64`).
    BigInt(BigInt),
    /// A float (`f64`, sent big-endian).
    Float(f64),
    /// A byte string (Python `bytes`).
    Bytes(Bytes),
}

impl Element {
    /// The list's elements, if this is a list.
    pub fn as_list(&self) -> Option<&[Element]> {
        match self {
            Element::List(l) => Some(l),
            _ => None,
        }
    }

    /// The bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Element::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The integer, if this is one that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Element::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<BigInt> for Element {
    /// An [`Element::Int`] when the value fits an `i64`, else an [`Element::BigInt`].
    fn from(v: BigInt) -> Self {
        match v.to_i64() {
            Some(i) => Element::Int(i),
            None => Element::BigInt(v),
        }
    }
}

impl From<i64> for Element {
    fn from(v: i64) -> Self {
        Element::Int(v)
    }
}

impl From<i32> for Element {
    fn from(v: i32) -> Self {
        Element::Int(i64::from(v))
    }
}

impl From<f64> for Element {
    fn from(v: f64) -> Self {
        Element::Float(v)
    }
}

impl From<Bytes> for Element {
    fn from(v: Bytes) -> Self {
        Element::Bytes(v)
    }
}

impl From<&[u8]> for Element {
    fn from(v: &[u8]) -> Self {
        Element::Bytes(Bytes::copy_from_slice(v))
    }
}

impl From<&'static str> for Element {
    /// The string's UTF-8 bytes (a Banana string is bytes).
    fn from(v: &'static str) -> Self {
        Element::Bytes(Bytes::from_static(v.as_bytes()))
    }
}

impl From<Vec<Element>> for Element {
    fn from(v: Vec<Element>) -> Self {
        Element::List(v)
    }
}

/// Limits of a Banana codec. Defaults are Twisted's, plus pb's depth and expression size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BananaConfig {
    /// The most base-128 prefix bytes before a type byte (default [`PREFIX_LIMIT`], 64, as
    /// Twisted's `setPrefixLimit(64)`). It also bounds integers: at most `7 * prefix_limit`
    /// bits, on both sides.
    pub prefix_limit: usize,
    /// The longest string, in bytes, and the longest list, in elements (default
    /// [`SIZE_LIMIT`], 640 KiB), received or sent.
    pub size_limit: usize,
    /// The most lists nested inside each other, received or sent (default
    /// [`DEFAULT_MAX_DEPTH`], 64). Twisted has no such limit.
    pub max_depth: usize,
    /// The most memory one expression may take (default [`DEFAULT_MAX_EXPRESSION_SIZE`],
    /// 64 MiB), counted as `size_of::<Element>()` per element plus the bytes of its strings
    /// (not of VOCAB words), so that a stream of one-byte elements cannot grow into an
    /// unbounded tree. Received or sent: the encoder charges what the decoder would. Twisted
    /// has no such limit.
    pub max_expression_size: usize,
}

impl Default for BananaConfig {
    fn default() -> Self {
        BananaConfig {
            prefix_limit: PREFIX_LIMIT,
            size_limit: SIZE_LIMIT,
            max_depth: DEFAULT_MAX_DEPTH,
            max_expression_size: DEFAULT_MAX_EXPRESSION_SIZE,
        }
    }
}

impl BananaConfig {
    /// Sets [`BananaConfig::prefix_limit`].
    pub fn prefix_limit(mut self, n: usize) -> Self {
        self.prefix_limit = n;
        self
    }

    /// Sets [`BananaConfig::size_limit`].
    pub fn size_limit(mut self, n: usize) -> Self {
        self.size_limit = n;
        self
    }

    /// Sets [`BananaConfig::max_depth`].
    pub fn max_depth(mut self, n: usize) -> Self {
        self.max_depth = n;
        self
    }

    /// Sets [`BananaConfig::max_expression_size`].
    pub fn max_expression_size(mut self, n: usize) -> Self {
        self.max_expression_size = n;
        self
    }
}

/// Why Banana bytes could not be decoded, or an element encoded.
///
/// A decode error leaves the stream unusable (Twisted drops the connection): the codec refuses
/// to decode more. An encode error writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BananaCodecError {
    /// More prefix bytes than [`BananaConfig::prefix_limit`] before a type byte.
    #[error("more than {limit} bytes of prefix")]
    PrefixTooLong {
        /// The configured limit.
        limit: usize,
    },
    /// A string longer than [`BananaConfig::size_limit`] (received: its length prefix).
    #[error("string of {len} bytes exceeds the size limit {limit}")]
    StringTooLong {
        /// The length, saturated at `usize::MAX`.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A list longer than [`BananaConfig::size_limit`] (received: its length prefix).
    #[error("list of {len} elements exceeds the size limit {limit}")]
    ListTooLong {
        /// The length, saturated at `usize::MAX`.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An integer that needs more base-128 digits than the prefix limit allows (only when
    /// encoding; a received one breaks the prefix limit first).
    #[error("integer needs {digits} prefix bytes, more than the limit {limit}")]
    IntTooLarge {
        /// The base-128 digits it needs.
        digits: usize,
        /// The configured prefix limit.
        limit: usize,
    },
    /// Lists nested deeper than [`BananaConfig::max_depth`].
    #[error("lists nested deeper than {limit}")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// An expression over [`BananaConfig::max_expression_size`], received or to be sent.
    #[error("expression larger than {limit} bytes in memory")]
    ExpressionTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A type byte Banana does not define.
    #[error("invalid type byte {0:#04x}")]
    InvalidTypeByte(u8),
    /// A VOCAB element while the dialect is not `pb`.
    #[error("vocabulary element {index} outside the pb dialect")]
    VocabOutsidePb {
        /// The index received, saturated at `u64::MAX`.
        index: u64,
    },
    /// A VOCAB element whose index is not in [`VOCABULARY`].
    #[error("unknown vocabulary index {index}")]
    UnknownVocab {
        /// The index received, saturated at `u64::MAX`.
        index: u64,
    },
    /// The input ended inside an element (only from [`decode_complete`]).
    #[error("truncated input")]
    Truncated,
    /// Bytes after the one expression expected (only from [`decode_complete`]).
    #[error("{len} bytes after the expression")]
    TrailingBytes {
        /// How many bytes were left.
        len: usize,
    },
    /// A decode was attempted after a decode error; the stream is unusable.
    #[error("the stream failed earlier")]
    Failed,
}

/// Encoder and incremental decoder of Banana elements, for one direction of one connection.
///
/// Encoding needs only the configuration and the dialect. Decoding keeps the lists still open
/// between calls to [`BananaCodec::decode`]: see there.
#[derive(Debug, Clone, Default)]
pub struct BananaCodec {
    config: BananaConfig,
    dialect: Dialect,
    /// Open lists, innermost last: the elements each still expects, and those received.
    stack: Vec<(usize, Vec<Element>)>,
    /// Memory charged to the expression being decoded.
    charged: usize,
    failed: bool,
}

impl BananaCodec {
    /// A codec with the given limits, in the [`Dialect::None`] dialect.
    pub fn new(config: BananaConfig) -> Self {
        BananaCodec {
            config,
            ..Self::default()
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &BananaConfig {
        &self.config
    }

    /// The dialect in force.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Switches dialect (after the handshake).
    pub fn set_dialect(&mut self, dialect: Dialect) {
        self.dialect = dialect;
    }

    /// Whether the decoder holds no part of an expression: the stream may end here.
    pub fn is_idle(&self) -> bool {
        self.stack.is_empty()
    }
}

/// Decodes `bytes` holding exactly one expression; [`BananaCodecError::Truncated`] if it is
/// incomplete, [`BananaCodecError::TrailingBytes`] if more follows.
pub fn decode_complete(
    bytes: &[u8],
    config: BananaConfig,
    dialect: Dialect,
) -> Result<Element, BananaCodecError> {
    let mut codec = BananaCodec::new(config);
    codec.set_dialect(dialect);
    let mut buf = bytes::BytesMut::from(bytes);
    match codec.decode(&mut buf)? {
        None => Err(BananaCodecError::Truncated),
        Some(_) if !buf.is_empty() => Err(BananaCodecError::TrailingBytes { len: buf.len() }),
        Some(e) => Ok(e),
    }
}

/// Encodes `element` with default limits in `dialect`, into new bytes.
pub fn encode_to_bytes(element: &Element, dialect: Dialect) -> Result<Bytes, BananaCodecError> {
    let mut codec = BananaCodec::new(BananaConfig::default());
    codec.set_dialect(dialect);
    let mut buf = bytes::BytesMut::new();
    codec.encode(element, &mut buf)?;
    Ok(buf.freeze())
}
