//! The serializer: a serde value to a Jelly [`Value`].

use std::cell::RefCell;

use bytes::Bytes;
use pb_proto::banana::{BananaConfig, Dialect};
use pb_proto::jelly::{self, JellyConfig, NodeId, Value};
use serde::ser::{self, Serialize};

use super::{Error, JellyRefs, copyable_tag, magic, types};
use crate::object::OBJECT_REF;
use crate::object::codec::ENCODING;

/// What one serialization shares: the connection's references, and the nodes of the graph
/// being built (only a [`types::Dynamic`] adds any).
pub(super) struct Cx<'a> {
    pub(super) refs: Option<&'a dyn JellyRefs>,
    pub(super) nodes: RefCell<Vec<Value>>,
}

/// Serializes one value into a [`Value`].
#[derive(Clone, Copy)]
pub(super) struct Ser<'a> {
    pub(super) cx: &'a Cx<'a>,
}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// The tag of a Copyable's name, checked to be one an instance may carry.
fn instance_tag(name: &str) -> Result<Option<Bytes>, Error> {
    match copyable_tag(name) {
        None => Ok(None),
        Some(tag) if tag.is_empty() || jelly::is_builtin_tag(tag.as_bytes()) => Err(err(format!(
            "copyable tag {tag:?} is empty or one of jelly's own"
        ))),
        Some(tag) => Ok(Some(Bytes::copy_from_slice(tag.as_bytes()))),
    }
}

fn instance(tag: Bytes, state: Value) -> Value {
    Value::Instance {
        tag,
        state: Box::new(state),
    }
}

/// An externally tagged variant: `{name: value}`.
fn variant(name: &'static str, value: Value) -> Value {
    Value::Dict(vec![(Value::from(name), value)])
}

/// A capacity from a length hint that a value may get wrong.
fn capacity(len: Option<usize>) -> usize {
    len.unwrap_or(0).min(1024)
}

impl Ser<'_> {
    /// The flavor of the reference at `index` of the encode context's list.
    fn object_ref(self, index: Value) -> Result<Value, Error> {
        let Some(refs) = self.cx.refs else {
            return Err(err(
                "an object reference can only be sent over a pb connection",
            ));
        };
        let r = match index {
            Value::Int(i) => usize::try_from(i)
                .ok()
                .and_then(|i| ENCODING.with(|s| s.borrow().last()?.refs.get(i).cloned())),
            _ => None,
        };
        let r = r.ok_or_else(|| err("object reference outside an encode context"))?;
        refs.export(&r).map_err(Error)
    }

    /// A Cacheable: `[tag, luid, state]` until a message carrying its state has been queued
    /// for this peer, then `["cached", luid]` (see [`JellyRefs::export_cache`]).
    fn cache(self, inner: Value, state_from: usize) -> Result<Value, Error> {
        let Some(refs) = self.cx.refs else {
            return Err(err("a cache can only be sent over a pb connection"));
        };
        let Value::Tuple(mut parts) = inner else {
            return Err(err("a cache must carry its handle, tag and state"));
        };
        let (
            Some(state),
            Some(Value::Int(version)),
            Some(Value::Str(tag)),
            Some(Value::Int(index)),
            None,
        ) = (
            parts.pop(),
            parts.pop(),
            parts.pop(),
            parts.pop(),
            parts.pop(),
        )
        else {
            return Err(err("a cache must carry its handle, tag and state"));
        };
        let r = usize::try_from(index)
            .ok()
            .and_then(|i| ENCODING.with(|s| s.borrow().last()?.refs.get(i).cloned()))
            .ok_or_else(|| err("cache handle outside an encode context"))?;
        let version =
            u64::try_from(version).map_err(|_| err("a cache's version is not negative"))?;
        let send = refs.export_cache(&r, state_from, version).map_err(Error)?;
        let luid = send.luid;
        Ok(if send.with_state {
            Value::Cache {
                tag: bytes::Bytes::from(tag.into_bytes()),
                luid,
                state: Box::new(state),
            }
        } else {
            Value::Cached(pb_proto::jelly::ObjectId::Num(luid))
        })
    }

    /// A graph's Banana bytes as a value of the graph being built: its nodes are renumbered
    /// after the nodes already there.
    fn dynamic(self, bytes: Value) -> Result<Value, Error> {
        let Value::Bytes(bytes) = bytes else {
            return Err(err("a dynamic value must carry bytes"));
        };
        let graph = jelly::decode(
            &bytes,
            &JellyConfig::default(),
            BananaConfig::default(),
            Dialect::Pb,
        )
        .map_err(|e| err(format!("dynamic value: {e}")))?;
        let (mut root, mut nodes) = graph.into_parts();
        let count = nodes.len();
        let mut out = self.cx.nodes.borrow_mut();
        let offset = out.len();
        shift(&mut root, offset, count)?;
        for node in &mut nodes {
            shift(node, offset, count)?;
        }
        out.extend(nodes);
        Ok(root)
    }
}

/// Renumbers the edges in `v` by `offset`, checking that each names one of `count` nodes.
fn shift(v: &mut Value, offset: usize, count: usize) -> Result<(), Error> {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Shared(id) => {
                if id.0 >= count {
                    return Err(err(format!("dynamic value: no node {}", id.0)));
                }
                *id = NodeId(id.0 + offset);
            }
            Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
                stack.extend(xs.iter_mut());
            }
            Value::Dict(pairs) => {
                for (k, v) in pairs {
                    stack.push(k);
                    stack.push(v);
                }
            }
            Value::Instance { state, .. } | Value::Cache { state, .. } => stack.push(state),
            _ => {}
        }
    }
    Ok(())
}

/// A Failure's state as Twisted's `CopyableFailure.getStateToCopy()` gives it, from the
/// dict of its four fields.
fn failure(state: Value) -> Result<Value, Error> {
    let field = |key: &str| {
        state
            .get(key)
            .cloned()
            .ok_or_else(|| err(format!("failure without {key}")))
    };
    let type_name = match field("type")? {
        Value::Str(s) => Value::Bytes(Bytes::from(s.into_bytes())),
        other => other,
    };
    Ok(jelly::copyable_failure(
        type_name,
        field("value")?,
        field("traceback")?,
        field("parents")?,
    ))
}

fn int_u64(v: u64) -> Value {
    match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(v.into()),
    }
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Struct<'a>;
    type SerializeStructVariant = Struct<'a>;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }

    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(Value::Int(v))
    }

    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        Ok(Value::from(pb_proto::banana::BigInt::from(v)))
    }

    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::Int(v.into()))
    }

    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        Ok(int_u64(v))
    }

    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        Ok(Value::from(pb_proto::banana::BigInt::from(v)))
    }

    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        Ok(Value::Float(v.into()))
    }

    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        Ok(Value::Float(v))
    }

    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::Str(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::None)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::None)
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<Value, Error> {
        Ok(match instance_tag(name)? {
            Some(tag) => instance(tag, Value::Dict(Vec::new())),
            None => Value::None,
        })
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::from(variant))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        // A Cacheable's state is jellied before it is known whether it goes: the sends made
        // for it start here.
        let state_from = match (name, self.cx.refs) {
            (magic::CACHE, Some(refs)) => refs.mark(),
            _ => 0,
        };
        let inner = value.serialize(self)?;
        match name {
            OBJECT_REF => self.object_ref(inner),
            magic::BIGINT => match inner {
                Value::Str(s) => types::parse_bigint(&s)
                    .map(Value::from)
                    .map_err(|e| err(e.to_string())),
                _ => Err(err("a big integer must carry its text")),
            },
            magic::DECIMAL => match inner {
                Value::Str(s) => s
                    .parse::<types::Decimal>()
                    .map(|d| Value::Decimal(d.0))
                    .map_err(|e| err(e.to_string())),
                _ => Err(err("a decimal must carry its text")),
            },
            magic::SET => match inner {
                Value::List(xs) => Ok(Value::Set(xs)),
                _ => Err(err("a set must carry a seq")),
            },
            magic::FROZENSET => match inner {
                Value::List(xs) => Ok(Value::FrozenSet(xs)),
                _ => Err(err("a frozenset must carry a seq")),
            },
            magic::DYNAMIC => self.dynamic(inner),
            magic::FAILURE => failure(inner),
            magic::CACHE => self.cache(inner, state_from),
            _ => Ok(match instance_tag(name)? {
                Some(tag) => instance(tag, inner),
                None => inner,
            }),
        }
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        name: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        Ok(variant(name, value.serialize(self)?))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<'a>, Error> {
        Ok(Seq::new(self, len, Wrap::List))
    }

    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Error> {
        Ok(Seq::new(self, Some(len), Wrap::Tuple))
    }

    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> Result<Seq<'a>, Error> {
        let wrap = match instance_tag(name)? {
            Some(tag) => Wrap::Instance(tag),
            None => Wrap::Tuple,
        };
        Ok(Seq::new(self, Some(len), wrap))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Seq<'a>, Error> {
        Ok(Seq::new(self, Some(len), Wrap::Variant(variant)))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Map<'a>, Error> {
        Ok(Map {
            ser: self,
            pairs: Vec::with_capacity(capacity(len)),
            key: None,
        })
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Struct<'a>, Error> {
        let wrap = match instance_tag(name)? {
            Some(tag) => Wrap::Instance(tag),
            None => Wrap::Dict,
        };
        Ok(Struct::new(self, len, wrap))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Struct<'a>, Error> {
        Ok(Struct::new(self, len, Wrap::Variant(variant)))
    }

    fn is_human_readable(&self) -> bool {
        true
    }
}

/// What a compound becomes once its items are in.
enum Wrap {
    /// A list.
    List,
    /// A tuple.
    Tuple,
    /// A dict with `str` keys.
    Dict,
    /// A Copyable's instance of the tuple or dict.
    Instance(Bytes),
    /// An enum variant: `{name: tuple or dict}`.
    Variant(&'static str),
}

/// A seq, tuple, tuple struct or tuple variant being serialized.
pub(super) struct Seq<'a> {
    ser: Ser<'a>,
    items: Vec<Value>,
    wrap: Wrap,
}

impl<'a> Seq<'a> {
    fn new(ser: Ser<'a>, len: Option<usize>, wrap: Wrap) -> Self {
        Seq {
            ser,
            items: Vec::with_capacity(capacity(len)),
            wrap,
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.items.push(value.serialize(self.ser)?);
        Ok(())
    }

    fn finish(self) -> Value {
        match self.wrap {
            Wrap::List => Value::List(self.items),
            Wrap::Tuple | Wrap::Dict => Value::Tuple(self.items),
            Wrap::Instance(tag) => instance(tag, Value::Tuple(self.items)),
            Wrap::Variant(name) => variant(name, Value::Tuple(self.items)),
        }
    }
}

impl ser::SerializeSeq for Seq<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTuple for Seq<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleStruct for Seq<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleVariant for Seq<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

/// A map being serialized.
pub(super) struct Map<'a> {
    ser: Ser<'a>,
    pairs: Vec<(Value, Value)>,
    key: Option<Value>,
}

impl ser::SerializeMap for Map<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(key.serialize(self.ser)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .key
            .take()
            .ok_or_else(|| err("a map value without its key"))?;
        self.pairs.push((key, value.serialize(self.ser)?));
        Ok(())
    }

    fn end(self) -> Result<Value, Error> {
        if self.key.is_some() {
            return Err(err("a map key without its value"));
        }
        Ok(Value::Dict(self.pairs))
    }
}

/// A struct or struct variant being serialized: a dict of its fields by name.
pub(super) struct Struct<'a> {
    ser: Ser<'a>,
    fields: Vec<(Value, Value)>,
    wrap: Wrap,
}

impl<'a> Struct<'a> {
    fn new(ser: Ser<'a>, len: usize, wrap: Wrap) -> Self {
        Struct {
            ser,
            fields: Vec::with_capacity(capacity(Some(len))),
            wrap,
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.fields
            .push((Value::from(key), value.serialize(self.ser)?));
        Ok(())
    }

    fn finish(self) -> Value {
        let dict = Value::Dict(self.fields);
        match self.wrap {
            Wrap::Instance(tag) => instance(tag, dict),
            Wrap::Variant(name) => variant(name, dict),
            Wrap::List | Wrap::Tuple | Wrap::Dict => dict,
        }
    }
}

impl ser::SerializeStruct for Struct<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push(key, value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for Struct<'_> {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push(key, value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}
