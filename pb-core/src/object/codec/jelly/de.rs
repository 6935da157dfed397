//! The deserializer: a [`Value`] of a graph to a serde value.
//!
//! Every method first follows a [`Value::Shared`] edge to its node, so sharing is invisible
//! to serde. Nothing here recurses by itself: nesting happens only through the visitors, which
//! the depth counter wraps, so a cycle ends at the depth limit.

use std::collections::HashMap;

use bytes::BytesMut;
use pb_proto::banana::{BananaCodec, Dialect};
use pb_proto::jelly::{self, Graph, JellyConfig, NodeId, Value};
use serde::de::value::{BytesDeserializer, StringDeserializer, U8Deserializer, U32Deserializer};
use serde::de::{self, DeserializeSeed, Expected, IntoDeserializer, Unexpected, Visitor};

use super::{Error, FAILURE_TAG, JellyRefs, copyable_tag, magic, types};
use crate::object::OBJECT_REF;
use crate::object::codec::DECODING;

/// What one deserialization shares.
pub(super) struct Cx<'a> {
    pub(super) graph: &'a Graph,
    pub(super) refs: Option<&'a dyn JellyRefs>,
    pub(super) copies: Copies,
}

/// The copies a deserialization makes of shared nodes. Jelly names a node that a value holds
/// in several places once, and Python shares the one object; a Rust value owns its parts, so
/// each place beyond the first that names a node gets a copy of it. A few bytes on the wire
/// can name a large node many times (and a node that names another many times, and so on), so
/// the copies are counted, as [`inline_size`] measures them, and refused past a limit.
pub(super) struct Copies {
    /// Each node's size, once it has been decoded (a node decoded once costs no copy).
    sizes: std::cell::RefCell<Vec<Option<usize>>>,
    size: std::cell::Cell<usize>,
    max: usize,
}

impl Copies {
    /// For `graph`, at most `max` bytes of copies.
    pub(super) fn new(graph: &Graph, max: usize) -> Copies {
        Copies {
            sizes: std::cell::RefCell::new(vec![None; graph.node_count()]),
            size: std::cell::Cell::new(0),
            max,
        }
    }

    /// Node `id` (`node`) is decoded: counts its copy if it was decoded before.
    fn count(&self, id: NodeId, node: &Value) -> Result<(), Error> {
        let mut sizes = self.sizes.borrow_mut();
        let Some(slot) = sizes.get_mut(id.0) else {
            return Ok(());
        };
        let Some(size) = *slot else {
            *slot = Some(inline_size(node));
            return Ok(());
        };
        let total = self.size.get().saturating_add(size);
        if total > self.max {
            return Err(err(format!(
                "the value's shared parts would be copied into more than {} bytes \
                 (JellyConfig::max_copied_size)",
                self.max
            )));
        }
        self.size.set(total);
        Ok(())
    }
}

/// The memory a value takes with its own parts, not those of the nodes it names: as Banana
/// counts an expression, `size_of::<Value>()` per value and the bytes of its strings.
fn inline_size(v: &Value) -> usize {
    let mut size = 0usize;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        size = size.saturating_add(std::mem::size_of::<Value>());
        match v {
            Value::Str(s) => size = size.saturating_add(s.len()),
            Value::Bytes(b) | Value::Unpersistable(b) => size = size.saturating_add(b.len()),
            Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
                stack.extend(xs)
            }
            Value::Dict(pairs) => {
                for (k, v) in pairs {
                    stack.push(k);
                    stack.push(v);
                }
            }
            Value::Instance { tag, state } | Value::Cache { tag, state, .. } => {
                size = size.saturating_add(tag.len());
                stack.push(state);
            }
            _ => {}
        }
    }
    size
}

/// Deserializes the value `v` of `cx.graph`.
#[derive(Clone, Copy)]
pub(super) struct De<'a> {
    pub(super) v: &'a Value,
    pub(super) cx: &'a Cx<'a>,
}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// How a value is named in an error.
fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::None => Unexpected::Other("None"),
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(i) => Unexpected::Signed(*i),
        Value::BigInt(_) => Unexpected::Other("big integer"),
        Value::Float(f) => Unexpected::Float(*f),
        Value::Bytes(b) => Unexpected::Bytes(b),
        Value::Str(s) => Unexpected::Str(s),
        Value::List(_) => Unexpected::Other("list"),
        Value::Tuple(_) => Unexpected::Other("tuple"),
        Value::Dict(_) => Unexpected::Map,
        Value::Set(_) => Unexpected::Other("set"),
        Value::FrozenSet(_) => Unexpected::Other("frozenset"),
        Value::Decimal(_) => Unexpected::Other("decimal"),
        Value::DateTime(_) => Unexpected::Other("datetime"),
        Value::Date(_) => Unexpected::Other("date"),
        Value::Time(_) => Unexpected::Other("time"),
        Value::TimeDelta(_) => Unexpected::Other("timedelta"),
        Value::Instance { .. } => Unexpected::Other("instance"),
        Value::Cache { .. }
        | Value::Remote(_)
        | Value::Local(_)
        | Value::Cached(_)
        | Value::LCache(_) => Unexpected::Other("object reference"),
        Value::Unpersistable(_) => Unexpected::Other("unpersistable"),
        Value::Shared(_) => Unexpected::Other("shared node"),
    }
}

fn invalid(v: &Value, exp: &dyn Expected) -> Error {
    de::Error::invalid_type(unexpected(v), exp)
}

/// The integer, if it fits an `i128`.
fn to_i128(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some((*i).into()),
        Value::BigInt(b) => b.to_i128(),
        _ => None,
    }
}

/// The integer, if it fits a `u128`.
fn to_u128(v: &Value) -> Option<u128> {
    match v {
        Value::Int(i) => u128::try_from(*i).ok(),
        Value::BigInt(b) if !b.is_negative() => {
            let m = b.magnitude_le();
            let mut le = [0u8; 16];
            le.get_mut(..m.len())?.copy_from_slice(m);
            Some(u128::from_le_bytes(le))
        }
        _ => None,
    }
}

fn is_int(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::BigInt(_))
}

/// The integer `v` as a `T`, or why not.
fn int<T: TryFrom<i128>>(v: &Value, exp: &dyn Expected) -> Result<T, Error> {
    if !is_int(v) {
        return Err(invalid(v, exp));
    }
    to_i128(v)
        .and_then(|i| T::try_from(i).ok())
        .ok_or_else(|| out_of_range(v, exp))
}

fn out_of_range(v: &Value, exp: &dyn Expected) -> Error {
    let text = match v {
        Value::Int(i) => i.to_string(),
        Value::BigInt(b) => b.to_string(),
        _ => String::new(),
    };
    err(format!("integer {text} out of range, expected {exp}"))
}

/// Whether `v` is a flavor naming an object.
fn is_flavor(v: &Value) -> bool {
    matches!(
        v,
        Value::Remote(_)
            | Value::Local(_)
            | Value::Cache { .. }
            | Value::Cached(_)
            | Value::LCache(_)
    )
}

impl<'a> De<'a> {
    fn at(self, v: &'a Value) -> De<'a> {
        De { v, cx: self.cx }
    }

    /// The value, with an edge followed to its node.
    fn value(self) -> Result<&'a Value, Error> {
        match self.v {
            Value::Shared(id) => match self.cx.graph.node(*id) {
                None => Err(err(format!("no node {} in the graph", id.0))),
                Some(Value::Shared(_)) => {
                    Err(err(format!("node {} holds only an edge to a node", id.0)))
                }
                Some(v) => {
                    self.cx.copies.count(*id, v)?;
                    Ok(v)
                }
            },
            v => Ok(v),
        }
    }

    /// The instance of a Copyable tagged `tag`: its state.
    fn instance_state(self, tag: &str) -> Result<&'a Value, Error> {
        match self.value()? {
            Value::Instance { tag: got, state } if got.as_ref() == tag.as_bytes() => Ok(state),
            Value::Instance { tag: got, .. } => Err(err(format!(
                "expected an instance of {tag}, found one of {}",
                String::from_utf8_lossy(got)
            ))),
            v => Err(invalid(v, &format!("an instance of {tag}").as_str())),
        }
    }

    fn seq<V: Visitor<'a>>(self, items: &'a [Value], visitor: V) -> Result<V::Value, Error> {
        let mut seq = Seq {
            iter: items.iter(),
            cx: self.cx,
        };
        let value = visitor.visit_seq(&mut seq)?;
        match seq.iter.len() {
            0 => Ok(value),
            left => Err(de::Error::invalid_length(
                items.len(),
                &format!("{} elements", items.len() - left).as_str(),
            )),
        }
    }

    fn map<V: Visitor<'a>>(
        self,
        pairs: &'a [(Value, Value)],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut map = Map {
            iter: pairs.iter(),
            value: None,
            cx: self.cx,
        };
        let value = visitor.visit_map(&mut map)?;
        match map.iter.len() {
            0 => Ok(value),
            left => Err(de::Error::invalid_length(
                pairs.len(),
                &format!("{} entries", pairs.len() - left).as_str(),
            )),
        }
    }

    fn object_ref<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = self.value()?;
        if !is_flavor(v) {
            return Err(invalid(v, &"an object reference"));
        }
        let Some(refs) = self.cx.refs else {
            return Err(err(
                "an object reference can only be received over a pb connection",
            ));
        };
        let r = refs.import(v).map_err(Error)?;
        let index = DECODING
            .with(|s| {
                let mut s = s.borrow_mut();
                let top = s.last_mut()?;
                let index = u32::try_from(top.refs.len()).ok()?;
                top.refs.push(r);
                Some(index)
            })
            .ok_or_else(|| err("object reference outside a decode context"))?;
        visitor.visit_newtype_struct(U32Deserializer::<Error>::new(index))
    }

    fn dynamic<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let graph = capture(self.v, self.cx.graph)?;
        let mut codec = BananaCodec::default();
        codec.set_dialect(Dialect::Pb);
        let mut bytes = BytesMut::new();
        jelly::encode(&graph, &JellyConfig::default(), &codec, &mut bytes)
            .map_err(|e| err(format!("dynamic value: {e}")))?;
        visitor.visit_newtype_struct(BytesDeserializer::<Error>::new(&bytes))
    }

    /// The value as text, for a wrapper type that parses its own.
    fn text<V: Visitor<'a>>(self, text: String, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(StringDeserializer::<Error>::new(text))
    }
}

/// The graph of `root` (a value inside `graph`) and every node it reaches, renumbered.
pub(crate) fn subgraph(root: &Value, graph: &Graph) -> Result<Graph, String> {
    capture(root, graph).map_err(|e| e.0)
}

/// The graph of `root` and every node it reaches, renumbered in order of first visit.
fn capture(root: &Value, graph: &Graph) -> Result<Graph, Error> {
    let mut ids: HashMap<usize, usize> = HashMap::new();
    let mut order: Vec<usize> = Vec::new();
    let mut root = root.clone();
    renumber(&mut root, graph, &mut ids, &mut order)?;
    let mut nodes = Vec::new();
    while let Some(&old) = order.get(nodes.len()) {
        let mut v = graph
            .node(NodeId(old))
            .cloned()
            .ok_or_else(|| err(format!("no node {old} in the graph")))?;
        renumber(&mut v, graph, &mut ids, &mut order)?;
        nodes.push(v);
    }
    Ok(Graph::from_parts(root, nodes))
}

/// Renumbers the edges in `v` by `ids`, giving each node met for the first time the next
/// number and queueing it in `order`.
fn renumber(
    v: &mut Value,
    graph: &Graph,
    ids: &mut HashMap<usize, usize>,
    order: &mut Vec<usize>,
) -> Result<(), Error> {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Shared(id) => {
                if graph.node(*id).is_none() {
                    return Err(err(format!("no node {} in the graph", id.0)));
                }
                let next = ids.len();
                let new = *ids.entry(id.0).or_insert_with(|| {
                    order.push(id.0);
                    next
                });
                *id = NodeId(new);
            }
            Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
                stack.extend(xs.iter_mut().rev());
            }
            Value::Dict(pairs) => {
                for (k, v) in pairs.iter_mut().rev() {
                    stack.push(v);
                    stack.push(k);
                }
            }
            Value::Instance { state, .. } | Value::Cache { state, .. } => stack.push(state),
            _ => {}
        }
    }
    Ok(())
}

macro_rules! deserialize_int {
    ($($method:ident => $visit:ident($t:ty)),* $(,)?) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
            let v = self.value()?;
            let n: $t = int(v, &visitor)?;
            visitor.$visit(n)
        }
    )*};
}

impl<'a> de::Deserializer<'a> for De<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::None => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            v @ Value::BigInt(_) => match (to_i128(v), to_u128(v)) {
                (Some(i), _) => visitor.visit_i128(i),
                (None, Some(u)) => visitor.visit_u128(u),
                (None, None) => Err(out_of_range(v, &visitor)),
            },
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
                self.seq(xs, visitor)
            }
            Value::Dict(pairs) => self.map(pairs, visitor),
            Value::Decimal(d) => visitor.visit_string(types::Decimal(d.clone()).to_string()),
            // The state, as a struct accepts it; one level only, so a cycle of instances
            // cannot loop here.
            Value::Instance { state, .. } => match self.at(state).value()? {
                v @ Value::Instance { .. } => Err(invalid(v, &visitor)),
                v => self.at(v).deserialize_any(visitor),
            },
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::Bool(b) => visitor.visit_bool(*b),
            v => Err(invalid(v, &visitor)),
        }
    }

    deserialize_int!(
        deserialize_i8 => visit_i8(i8),
        deserialize_i16 => visit_i16(i16),
        deserialize_i32 => visit_i32(i32),
        deserialize_i64 => visit_i64(i64),
        deserialize_i128 => visit_i128(i128),
        deserialize_u8 => visit_u8(u8),
        deserialize_u16 => visit_u16(u16),
        deserialize_u32 => visit_u32(u32),
        deserialize_u64 => visit_u64(u64),
    );

    fn deserialize_u128<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let v = self.value()?;
        if !is_int(v) {
            return Err(invalid(v, &visitor));
        }
        match to_u128(v) {
            Some(u) => visitor.visit_u128(u),
            None => Err(out_of_range(v, &visitor)),
        }
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::Float(f) => visitor.visit_f64(*f),
            // Python code passes `1` for `1.0` freely.
            Value::Int(i) => visitor.visit_f64(*i as f64),
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => visitor.visit_borrowed_str(s),
                Err(_) => Err(invalid(self.v, &visitor)),
            },
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::Str(s) => visitor.visit_borrowed_bytes(s.as_bytes()),
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::None => visitor.visit_none(),
            // The value found, not the edge to it: a shared node is counted once.
            v => visitor.visit_some(self.at(v)),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::None => visitor.visit_unit(),
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match copyable_tag(name) {
            Some(tag) => {
                self.instance_state(tag)?;
                visitor.visit_unit()
            }
            None => self.deserialize_unit(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match name {
            OBJECT_REF => self.object_ref(visitor),
            magic::BIGINT => match self.value()? {
                Value::Int(i) => self.text(i.to_string(), visitor),
                Value::BigInt(b) => self.text(b.to_string(), visitor),
                v => Err(invalid(v, &"an integer")),
            },
            magic::DECIMAL => match self.value()? {
                Value::Decimal(d) => self.text(types::Decimal(d.clone()).to_string(), visitor),
                Value::Int(i) => self.text(i.to_string(), visitor),
                Value::BigInt(b) => self.text(b.to_string(), visitor),
                v => Err(invalid(v, &"a decimal")),
            },
            magic::SET | magic::FROZENSET => visitor.visit_newtype_struct(self),
            magic::DYNAMIC => self.dynamic(visitor),
            magic::FAILURE => {
                visitor.visit_newtype_struct(self.at(self.instance_state(FAILURE_TAG)?))
            }
            _ => match copyable_tag(name) {
                Some(tag) => visitor.visit_newtype_struct(self.at(self.instance_state(tag)?)),
                None => visitor.visit_newtype_struct(self),
            },
        }
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
                self.seq(xs, visitor)
            }
            // `bytes` is a sequence of integers in Python, and how a `Vec<u8>` arrives.
            Value::Bytes(b) => {
                let mut seq = ByteSeq(b.iter());
                let value = visitor.visit_seq(&mut seq)?;
                match seq.0.len() {
                    0 => Ok(value),
                    left => Err(de::Error::invalid_length(
                        b.len(),
                        &format!("{} elements", b.len() - left).as_str(),
                    )),
                }
            }
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::Tuple(xs) | Value::List(xs) => self.seq(xs, visitor),
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match copyable_tag(name) {
            Some(tag) => self
                .at(self.instance_state(tag)?)
                .deserialize_tuple(len, visitor),
            None => self.deserialize_tuple(len, visitor),
        }
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::Dict(pairs) => self.map(pairs, visitor),
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let state = match copyable_tag(name) {
            Some(tag) => self.at(self.instance_state(tag)?).value()?,
            None => match self.value()? {
                Value::Instance { state, .. } => self.at(state).value()?,
                v => v,
            },
        };
        match state {
            Value::Dict(pairs) => self.map(pairs, visitor),
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value()? {
            v @ (Value::Str(_) | Value::Bytes(_)) => visitor.visit_enum(Enum {
                variant: self.at(v),
                value: None,
            }),
            Value::Dict(pairs) => match pairs.as_slice() {
                [(k, v)] => visitor.visit_enum(Enum {
                    variant: self.at(k),
                    value: Some(self.at(v)),
                }),
                _ => Err(de::Error::invalid_length(
                    pairs.len(),
                    &"a dict of one entry, the variant",
                )),
            },
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value()? {
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            v @ Value::Int(_) => {
                let n: u64 = int(v, &visitor)?;
                visitor.visit_u64(n)
            }
            v => Err(invalid(v, &visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        // Not looked into: an ignored value may be a cycle.
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        true
    }
}

/// The elements of a list, tuple or set.
struct Seq<'a> {
    iter: std::slice::Iter<'a, Value>,
    cx: &'a Cx<'a>,
}

impl<'a> de::SeqAccess<'a> for Seq<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.iter.next() {
            Some(v) => seed.deserialize(De { v, cx: self.cx }).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// The bytes of a `bytes` value, as integers.
struct ByteSeq<'a>(std::slice::Iter<'a, u8>);

impl<'a> de::SeqAccess<'a> for ByteSeq<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.0.next() {
            Some(&b) => seed
                .deserialize::<U8Deserializer<Error>>(b.into_deserializer())
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// The entries of a dict.
struct Map<'a> {
    iter: std::slice::Iter<'a, (Value, Value)>,
    value: Option<&'a Value>,
    cx: &'a Cx<'a>,
}

impl<'a> de::MapAccess<'a> for Map<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(De { v: k, cx: self.cx }).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<T::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(De { v, cx: self.cx }),
            None => Err(err("a dict value asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// An enum: the variant's name, and its content unless it is a unit variant.
struct Enum<'a> {
    variant: De<'a>,
    value: Option<De<'a>>,
}

impl<'a> de::EnumAccess<'a> for Enum<'a> {
    type Error = Error;
    type Variant = Variant<'a>;

    fn variant_seed<T: DeserializeSeed<'a>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Variant<'a>), Error> {
        let name = seed.deserialize(self.variant)?;
        Ok((name, Variant(self.value)))
    }
}

/// An enum variant's content.
struct Variant<'a>(Option<De<'a>>);

impl<'a> de::VariantAccess<'a> for Variant<'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None => Ok(()),
            Some(de) => match de.value()? {
                Value::None => Ok(()),
                v => Err(invalid(v, &"a unit variant")),
            },
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, seed: T) -> Result<T::Value, Error> {
        match self.0 {
            Some(de) => seed.deserialize(de),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'a>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(de) => de::Deserializer::deserialize_tuple(de, len, visitor),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &visitor)),
        }
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Some(de) => de::Deserializer::deserialize_struct(de, "", fields, visitor),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &visitor)),
        }
    }
}
