//! Twisted's Jelly: Python values as Banana s-expressions, with no I/O.
//!
//! A [`Value`] is any value Jelly carries: `None`, bools, ints of any size, floats, `bytes`,
//! `str`, lists, tuples, dicts (any keys), sets, frozensets, `Decimal`, the `datetime` types,
//! instances and Copyables by type tag, and Perspective Broker's flavors as Jelly writes them
//! (`["remote", luid]`, `["local", luid]`, `["cached", luid]`, `["lcache", luid]` and a
//! Cacheable's first `[tag, luid, state]`). [`to_sexp`] turns a [`Graph`] of values into the
//! [`Element`] Twisted's `jelly()` gives for the same Python value, and [`from_sexp`] does what
//! `unjelly()` does, except that nothing is ever imported or instantiated: an unknown type tag
//! is data ([`Value::Instance`]), and `class`, `module`, `function`, `method`, `instance` and
//! `persistent` are refused ([`JellyError::Insecure`]).
//!
//! # Sharing and cycles
//! Within one message, Jelly sends a container reachable along two paths once, as
//! `["reference", n, body]` where it is first met and `["dereference", n]` everywhere else; a
//! container may contain itself. A [`Graph`] holds such containers in an arena: a node is a
//! `Value` stored in the graph and named by a [`NodeId`], and [`Value::Shared`] is an edge to
//! it. A tree without sharing needs no nodes at all. Cycles are only ids into a `Vec`, so
//! dropping a graph frees everything: no `Rc`, nothing leaks. The encoder counts how often
//! each node is reached and gives reference numbers in the order the second visit happens in a
//! depth-first walk (keys before values), as Twisted's `_Jellier` does, so the bytes are
//! Twisted's; a node reached once is sent inline. The decoder makes one node per reference
//! number, in order of first mention, accepting dereferences before their reference as
//! Twisted's `NotKnown` placeholders do.
//!
//! ```
//! # mod pb { pub use pb_proto as proto; }
//! use pb::proto::banana::{BananaCodec, Dialect};
//! use pb::proto::jelly::{self, Graph, Value};
//!
//! // l = [1, 2]; d = {"a": l, "b": l}
//! let mut g = Graph::default();
//! let l = g.add_node(Value::List(vec![Value::Int(1), Value::Int(2)]));
//! g.set_root(Value::Dict(vec![
//!     (Value::from("a"), Value::Shared(l)),
//!     (Value::from("b"), Value::Shared(l)),
//! ]));
//! let mut codec = BananaCodec::default();
//! codec.set_dialect(Dialect::Pb);
//! let mut wire = bytes::BytesMut::new();
//! jelly::encode(&g, &Default::default(), &codec, &mut wire).unwrap();
//! assert_eq!(
//!     &wire[..],
//!     b"\x03\x80\x05\x87\x02\x80\x02\x80\x07\x82unicode\x01\x82a\x03\x80\x04\x87\x01\x81\
//!       \x03\x80\x08\x87\x01\x81\x02\x81\x02\x80\x02\x80\x07\x82unicode\x01\x82b\x02\x80\x03\x87\x01\x81"
//! );
//! let back = jelly::decode(&wire, &Default::default(), Default::default(), Dialect::Pb).unwrap();
//! let Value::Dict(pairs) = back.root() else { panic!() };
//! assert_eq!(pairs[0].1, pairs[1].1); // both are the same node
//! assert_eq!(back.resolve(&pairs[0].1), &Value::List(vec![Value::Int(1), Value::Int(2)]));
//! ```
//!
//! # What differs from Twisted
//! - Nothing is resolved by name: Twisted imports a dotted tag's module and class when its
//!   security options allow it; pb keeps the tag and state as data, and refuses the tags that
//!   would name code whatever the options.
//! - Jelly's own types must have exactly their arguments (Twisted ignores extra ones, which
//!   its jellier never writes); `datetime` fields are checked against their ranges, as
//!   Python's constructors do, but a day is not checked against its month.
//! - Depth and the number of reference numbers per message are limited ([`JellyConfig`]).
//! - A `reference` whose body is itself a `reference` or `dereference` is refused: Twisted
//!   never writes one.
//!
//! # Layout
//! - `value`: [`Value`], [`Graph`] and the small types they hold;
//! - `encode`: [`to_sexp`], a graph to an s-expression;
//! - `decode`: [`from_sexp`], an s-expression to a graph.

mod decode;
mod encode;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod value;

use bytes::{Bytes, BytesMut};

use crate::banana::{
    BananaCodec, BananaCodecError, BananaConfig, Dialect, Element, decode_complete,
};

pub use decode::from_sexp;
pub use encode::to_sexp;
pub use value::{Date, DateTime, Decimal, Graph, NodeId, ObjectId, Time, TimeDelta, Value};

/// pb's default for [`JellyConfig::max_depth`]: 64 values inside each other.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// pb's default for [`JellyConfig::max_references`]: 65 536 reference numbers per message.
pub const DEFAULT_MAX_REFERENCES: usize = 65_536;

/// The default of [`JellyConfig::max_copied_size`]: what one received Banana expression may
/// take ([`crate::banana::DEFAULT_MAX_EXPRESSION_SIZE`], 64 MiB), so that a value with shared
/// parts decodes to no more than twice what a value without could.
pub const DEFAULT_MAX_COPIED_SIZE: usize = crate::banana::DEFAULT_MAX_EXPRESSION_SIZE;

/// The type tags Jelly itself uses; an instance may not be tagged with one of them.
pub const BUILTIN_TAGS: [&[u8]; 26] = [
    b"None",
    b"unicode",
    b"boolean",
    b"list",
    b"tuple",
    b"set",
    b"frozenset",
    b"dictionary",
    b"decimal",
    b"datetime",
    b"date",
    b"time",
    b"timedelta",
    b"reference",
    b"dereference",
    b"unpersistable",
    b"remote",
    b"local",
    b"cached",
    b"lcache",
    b"class",
    b"module",
    b"function",
    b"method",
    b"instance",
    b"persistent",
];

/// The tag of a failure sent in an `error` answer: Twisted's `pb.CopyableFailure`.
pub const FAILURE_TAG: &str = "twisted.spread.pb.CopyableFailure";

/// A failure as Twisted's `CopyableFailure.getStateToCopy()` gives it: an instance tagged
/// [`FAILURE_TAG`] with `type` (the exception class's qualified name, as bytes), `value`,
/// `traceback` and `parents` as given, and the keys Twisted's `CopiedFailure` needs besides
/// (`frames`, `stack`, `tb`, `count`, `captureVars`, `unsafeTracebacks`, empty). Without
/// those a Twisted peer's `getTracebackObject()` and `cleanFailure()` fail.
pub fn copyable_failure(type_name: Value, value: Value, traceback: Value, parents: Value) -> Value {
    let entry = |k: &str, v: Value| (Value::Str(k.to_owned()), v);
    Value::Instance {
        tag: Bytes::from_static(FAILURE_TAG.as_bytes()),
        state: Box::new(Value::Dict(vec![
            entry("type", type_name),
            entry("value", value),
            entry("traceback", traceback),
            entry("parents", parents),
            entry("frames", Value::List(Vec::new())),
            entry("stack", Value::List(Vec::new())),
            entry("tb", Value::None),
            entry("count", Value::Int(0)),
            entry("captureVars", Value::Bool(false)),
            entry("unsafeTracebacks", Value::Bool(false)),
        ])),
    }
}

/// Limits on one message's value, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct JellyConfig {
    /// The most values nested inside each other (default [`DEFAULT_MAX_DEPTH`], 64). Banana's
    /// own depth limit usually bites first, as a dict entry takes two lists.
    pub max_depth: usize,
    /// The most reference numbers one received message may use (default
    /// [`DEFAULT_MAX_REFERENCES`]).
    pub max_references: usize,
    /// The most memory the copies of a received value's shared parts may take when pb decodes
    /// it into Rust values (default [`DEFAULT_MAX_COPIED_SIZE`], 64 MiB), counted as Banana
    /// counts an expression. Jelly names a part that a value holds in several places once, and
    /// Python shares one object; a Rust value owns its parts, so each place beyond the first
    /// gets a copy, and a few bytes that name a large part many times (or a part that names
    /// another many times) would otherwise decode into gigabytes. Past it, the value fails to
    /// decode (a call's arguments as `BadArguments`, an answer as `BadAnswer`).
    pub max_copied_size: usize,
}

impl Default for JellyConfig {
    fn default() -> Self {
        JellyConfig {
            max_depth: DEFAULT_MAX_DEPTH,
            max_references: DEFAULT_MAX_REFERENCES,
            max_copied_size: DEFAULT_MAX_COPIED_SIZE,
        }
    }
}

impl JellyConfig {
    /// Sets [`JellyConfig::max_depth`].
    pub fn max_depth(mut self, n: usize) -> Self {
        self.max_depth = n;
        self
    }

    /// Sets [`JellyConfig::max_references`].
    pub fn max_references(mut self, n: usize) -> Self {
        self.max_references = n;
        self
    }

    /// Sets [`JellyConfig::max_copied_size`].
    pub fn max_copied_size(mut self, n: usize) -> Self {
        self.max_copied_size = n;
        self
    }
}

/// Why a value could not be jellied or unjellied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JellyError {
    /// The Banana layer failed.
    #[error("banana")]
    Banana(#[source] BananaCodecError),
    /// An empty list where an expression was expected.
    #[error("empty list where a jelly expression was expected")]
    EmptyList,
    /// A list whose first element, the type tag, is not a byte string.
    #[error("type tag is not a byte string")]
    TagNotBytes,
    /// A type that would make Python import or call something (`class`, `module`,
    /// `function`, `method`, `instance`, `persistent`); refused, never resolved.
    #[error("insecure jelly type {}", String::from_utf8_lossy(.0))]
    Insecure(Bytes),
    /// An expression of a known type whose shape is wrong.
    #[error("malformed {} expression: {reason}", String::from_utf8_lossy(.tag))]
    Malformed {
        /// The expression's type tag.
        tag: Bytes,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `unicode` string that is not UTF-8.
    #[error("unicode string is not utf-8")]
    BadUtf8(#[source] std::str::Utf8Error),
    /// Two `reference` expressions with the same number.
    #[error("reference {0} defined twice")]
    DuplicateReference(i64),
    /// A `dereference` to a number no `reference` defines.
    #[error("dereference {0} has no reference")]
    DanglingReference(i64),
    /// More reference numbers than [`JellyConfig::max_references`].
    #[error("more than {limit} references in one message")]
    TooManyReferences {
        /// The configured limit.
        limit: usize,
    },
    /// Values nested deeper than [`JellyConfig::max_depth`].
    #[error("values nested deeper than {limit}")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// A [`Value::Shared`] naming no node of the graph (when encoding).
    #[error("no node {0:?} in the graph")]
    NoSuchNode(NodeId),
    /// A node whose value is itself a [`Value::Shared`] (when encoding): an alias that Jelly
    /// cannot express.
    #[error("node {0:?} holds only an edge to a node")]
    AliasNode(NodeId),
    /// An instance tagged with one of Jelly's own type tags (when encoding).
    #[error("instance tag {} is one of jelly's own", String::from_utf8_lossy(.0))]
    ReservedTag(Bytes),
}

impl From<BananaCodecError> for JellyError {
    fn from(e: BananaCodecError) -> Self {
        JellyError::Banana(e)
    }
}

/// Jellies `graph` and appends its Banana bytes to `dst`; on error nothing is appended.
pub fn encode(
    graph: &Graph,
    config: &JellyConfig,
    codec: &BananaCodec,
    dst: &mut BytesMut,
) -> Result<(), JellyError> {
    let sexp = to_sexp(graph, config)?;
    codec.encode(&sexp, dst)?;
    Ok(())
}

/// Decodes `bytes` holding exactly one message and unjellies it.
pub fn decode(
    bytes: &[u8],
    config: &JellyConfig,
    banana: BananaConfig,
    dialect: Dialect,
) -> Result<Graph, JellyError> {
    from_sexp(&decode_complete(bytes, banana, dialect)?, config)
}

/// Takes the next complete message out of a receive buffer with `codec` (which keeps a
/// partial one between calls) and unjellies it; `Ok(None)` while it is incomplete. Only the
/// message's bytes are consumed.
pub fn decode_buf(
    src: &mut BytesMut,
    config: &JellyConfig,
    codec: &mut BananaCodec,
) -> Result<Option<Graph>, JellyError> {
    match codec.decode(src)? {
        None => Ok(None),
        Some(sexp) => from_sexp(&sexp, config).map(Some),
    }
}

/// Whether `tag` is one of Jelly's own type tags.
pub fn is_builtin_tag(tag: &[u8]) -> bool {
    BUILTIN_TAGS.contains(&tag)
}

/// The element of a byte string.
fn atom(word: &'static [u8]) -> Element {
    Element::Bytes(Bytes::from_static(word))
}
