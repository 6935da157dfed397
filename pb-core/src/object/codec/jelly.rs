//! The Jelly payload format: serde values to and from Twisted's Jelly values
//! ([`pb_proto::jelly::Graph`]), for peers that speak Twisted's Perspective Broker.
//!
//! The native codec writes bincode; a Twisted peer reads Python values instead, so the
//! arguments and results of calls on a PB connection go through this format. It maps serde's
//! data model onto Python's types, as serde_json maps it onto JSON's:
//!
//! | serde | Jelly |
//! |---|---|
//! | bool | `bool` |
//! | integers | `int` ([`Value::Int`], or [`Value::BigInt`] beyond `i64`) |
//! | f32, f64 | `float` (an `int` is accepted too) |
//! | char, str | `str` (UTF-8 `bytes` are accepted too, as Python 2 peers send) |
//! | bytes | `bytes` (a `str` is accepted too) |
//! | none, unit, unit struct | `None` |
//! | some(x), newtype struct(x) | `x` |
//! | unit variant | its name, as a `str` |
//! | newtype, tuple, struct variant | `{name: value}`, `{name: (…)}`, `{name: {…}}` |
//! | seq | `list` (a tuple, set or frozenset is accepted too) |
//! | tuple, tuple struct | `tuple` (a list is accepted too) |
//! | map | `dict`, any keys |
//! | struct | `dict` with `str` keys (`bytes` keys, or an instance's state, are accepted too) |
//!
//! A struct whose serde name is `$pb::copyable=TAG` (as `#[pb::copyable(twisted = "TAG")]`
//! names it) is a Copyable: an instance `[TAG, state]`, which must carry that tag when
//! received. An [`ObjectRef`] becomes a flavor through the connection's
//! [`JellyRefs`]. The wrapper types of [`types`] carry what serde's model lacks: integers of
//! any size, `Decimal`, sets, Failures, and any Jelly value as it is ([`Dynamic`]).
//!
//! An `ObjectRef` must be reached through ordinary serde calls: inside an untagged enum or a
//! flattened field (which serde buffers through `deserialize_any`) a flavor is an error.
//!
//! The format is human-readable (`is_human_readable`): types with two serde forms, such as
//! addresses, take their text form, which a Python peer can read.
//!
//! A received graph may share nodes and contain cycles; [`Value::Shared`] edges are followed
//! wherever they lead, so a shared list deserializes once per place it appears, and a cycle
//! ends at the depth limit with [`CodecError::TooDeep`]. The values produced are trees, except
//! inside a [`Dynamic`].
//!
//! # Layout
//! - `ser`: the serializer, serde to a [`Value`];
//! - `de`: the deserializer, a [`Value`] of a graph to serde;
//! - `types`: the public wrapper types.

mod de;
pub(crate) use de::subgraph;
mod ser;
#[cfg(test)]
mod tests;
mod types;

use std::cell::RefCell;
use std::fmt;

use pb_proto::jelly::{Graph, Value};
use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed};

use super::{CodecError, Context, DECODING, Scope, depth, encoding_scope};
use crate::object::ObjectRef;

pub use types::{BigInt, BigIntRangeError, Decimal, Dynamic, Failure, FrozenSet, ParseError, Set};

pub(crate) use pb_proto::twisted::CacheSend;

/// How object references map to PB flavors on one connection; implemented by the PB driver.
pub(crate) trait JellyRefs {
    /// The flavor for sending `r`: `Value::Remote(id)` after exporting it, or
    /// `Value::Local(id)` for a reference coming home.
    fn export(&self, r: &ObjectRef) -> Result<Value, String>;
    /// The reference a received flavor names (`Value::Remote`, `Local`, `Cache{..}`,
    /// `Cached`, `LCache`).
    fn import(&self, flavor: &Value) -> Result<ObjectRef, String>;
    /// Exports `r` as a Cacheable: its luid, whether this send carries its state (else it
    /// goes as `["cached", luid]`), and whether it was exported now. Its state, at `version`,
    /// was jellied just before (the sends made since [`JellyRefs::mark`] returned
    /// `state_from`); a send without it takes those back.
    fn export_cache(
        &self,
        r: &ObjectRef,
        state_from: usize,
        version: u64,
    ) -> Result<CacheSend, String> {
        let _ = (r, state_from, version);
        Err("a cache can only be sent over a Twisted PB connection".to_owned())
    }
    /// Where the sends made from now on start (see [`JellyRefs::export_cache`]).
    fn mark(&self) -> usize {
        0
    }
}

/// The serde name prefix of a Copyable's struct; the rest of the name is its type tag.
pub(crate) const COPYABLE_PREFIX: &str = "$pb::copyable=";

/// The type tag of Twisted's `CopyableFailure`.
pub(crate) use pb_proto::jelly::FAILURE_TAG;

/// Serde names of the wrapper types' newtypes, which this format recognises. Other formats
/// see a newtype around the content named in each comment.
pub(crate) mod magic {
    /// [`super::BigInt`]: its decimal text.
    pub(crate) const BIGINT: &str = "$pb::jelly::BigInt";
    /// [`super::Decimal`]: its text, as Python's `str(Decimal)`.
    pub(crate) const DECIMAL: &str = "$pb::jelly::Decimal";
    /// [`super::Set`]: its elements, a seq.
    pub(crate) const SET: &str = "$pb::jelly::Set";
    /// [`super::FrozenSet`]: its elements, a seq.
    pub(crate) const FROZENSET: &str = "$pb::jelly::FrozenSet";
    /// [`super::Dynamic`]: its graph's Banana bytes (dialect `pb`).
    pub(crate) const DYNAMIC: &str = "$pb::jelly::Dynamic";
    /// [`super::Failure`]: a struct of `type`, `value`, `traceback`, `parents`.
    pub(crate) const FAILURE: &str = "$pb::jelly::Failure";
    /// A `pb::Cache`'s replica sent to a Twisted peer: the tuple of its handle's index in the
    /// encode context, its type tag and its state (never seen by other formats).
    pub(crate) const CACHE: &str = "$pb::jelly::Cache";
}

/// Why a value does not map to or from Jelly.
#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// Serialize `value` into a Jelly graph (a tree; no sharing is produced except by
/// [`Dynamic`]). Object references go through `refs.export`; with `refs == None` a reference
/// is an error. The value is bound for no native connection: [`current_peer`](super::current_peer)
/// answers `None` while it is serialized.
pub(crate) fn to_graph<T: Serialize + ?Sized>(
    value: &T,
    refs: Option<&dyn JellyRefs>,
) -> Result<Graph, CodecError> {
    // The context collects the references `ObjectRef`'s `Serialize` hands over by index.
    let scope = encoding_scope(None);
    let cx = ser::Cx {
        refs,
        nodes: RefCell::new(Vec::new()),
    };
    let root = value
        .serialize(ser::Ser { cx: &cx })
        .map_err(|e| CodecError::Encode(e.0))?;
    drop(scope);
    Ok(Graph::from_parts(root, cx.nodes.into_inner()))
}

/// Deserialize the graph's root with `seed`, failing with [`CodecError::TooDeep`] if the value
/// nests more than `max_depth` levels (counted as the native codec counts them), and with
/// [`CodecError::Decode`] if the copies of its shared parts would take more than `max_copied`
/// bytes ([`JellyConfig::max_copied_size`](pb_proto::jelly::JellyConfig::max_copied_size)).
/// Flavors become references through `refs.import`; with `refs == None` a flavor is an error.
pub(crate) fn from_graph_seed<S, V>(
    graph: &Graph,
    refs: Option<&dyn JellyRefs>,
    (max_depth, max_copied): (usize, usize),
    seed: S,
) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    // A context of its own, which imported references are pushed on for `ObjectRef`'s
    // `Deserialize` to find, and which hides any decode this one runs inside.
    let _scope = Scope::enter(&DECODING, Context::default());
    let cx = de::Cx {
        graph,
        refs,
        copies: de::Copies::new(graph, max_copied),
    };
    let depth = depth::Depth::new(max_depth);
    let seed = depth::Seed {
        seed,
        depth: &depth,
    };
    match seed.deserialize(de::De {
        v: graph.root(),
        cx: &cx,
    }) {
        Ok(v) => Ok(v),
        Err(_) if depth.exceeded() => Err(CodecError::TooDeep { max: max_depth }),
        Err(e) => Err(CodecError::Decode(e.0)),
    }
}

/// Deserialize a `T` from the graph's root, as [`from_graph_seed`].
pub(crate) fn from_graph<T: DeserializeOwned>(
    graph: &Graph,
    refs: Option<&dyn JellyRefs>,
    limits: (usize, usize),
) -> Result<T, CodecError> {
    from_graph_seed(graph, refs, limits, std::marker::PhantomData::<T>)
}

/// The type tag of a Copyable's serde name, if it is one.
fn copyable_tag(name: &str) -> Option<&str> {
    name.strip_prefix(COPYABLE_PREFIX)
}
