//! [`to_sexp`]: a [`Graph`] to the s-expression Twisted's `jelly()` gives.

use bytes::Bytes;

use super::value::{Date, Graph, NodeId, ObjectId, Time, Value};
use super::{JellyConfig, JellyError, atom, is_builtin_tag};
use crate::banana::Element;

/// The s-expression of `graph`, as Twisted's `jelly()` writes the same Python value.
///
/// A node reached more than once is `["reference", n, body]` where the depth-first walk
/// first meets it and `["dereference", n]` after; `n` counts from 1 in the order of the second
/// meetings, as Twisted's `_Jellier` numbers them. A node reached once is sent inline.
pub fn to_sexp(graph: &Graph, config: &JellyConfig) -> Result<Element, JellyError> {
    let mut walk = Walk {
        graph,
        config,
        visits: vec![0; graph.node_count()],
        refs: vec![None; graph.node_count()],
        next_ref: 1,
        emitted: vec![false; graph.node_count()],
    };
    walk.count(graph.root(), 0)?;
    walk.emit(graph.root(), 0)
}

struct Walk<'a> {
    graph: &'a Graph,
    config: &'a JellyConfig,
    /// How often each node was reached, counting to 2.
    visits: Vec<u8>,
    /// Each node's reference number, given on its second visit.
    refs: Vec<Option<i64>>,
    next_ref: i64,
    /// Whether each node's body has been emitted.
    emitted: Vec<bool>,
}

impl<'a> Walk<'a> {
    fn node(&self, id: NodeId) -> Result<&'a Value, JellyError> {
        let v = self.graph.node(id).ok_or(JellyError::NoSuchNode(id))?;
        if matches!(v, Value::Shared(_)) {
            return Err(JellyError::AliasNode(id));
        }
        Ok(v)
    }

    fn check_depth(&self, depth: usize) -> Result<(), JellyError> {
        if depth >= self.config.max_depth {
            return Err(JellyError::TooDeep {
                limit: self.config.max_depth,
            });
        }
        Ok(())
    }

    /// The first pass: counts visits to nodes and numbers the shared ones.
    fn count(&mut self, value: &Value, depth: usize) -> Result<(), JellyError> {
        self.check_depth(depth)?;
        match value {
            Value::Shared(id) => {
                let node = self.node(*id)?;
                let visits = self
                    .visits
                    .get_mut(id.0)
                    .ok_or(JellyError::NoSuchNode(*id))?;
                *visits = visits.saturating_add(1);
                match *visits {
                    1 => self.count(node, depth + 1)?,
                    2 => {
                        if let Some(slot) = self.refs.get_mut(id.0) {
                            *slot = Some(self.next_ref);
                        }
                        self.next_ref += 1;
                    }
                    _ => {}
                }
            }
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => {
                for item in items {
                    self.count(item, depth + 1)?;
                }
            }
            Value::Dict(pairs) => {
                for (k, v) in pairs {
                    self.count(k, depth + 1)?;
                    self.count(v, depth + 1)?;
                }
            }
            Value::Instance { tag, state } | Value::Cache { tag, state, .. } => {
                if is_builtin_tag(tag) {
                    return Err(JellyError::ReservedTag(tag.clone()));
                }
                self.count(state, depth + 1)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The second pass: builds the s-expression.
    fn emit(&mut self, value: &Value, depth: usize) -> Result<Element, JellyError> {
        self.check_depth(depth)?;
        let items = |tag: &'static [u8], walk: &mut Self, items: &[Value]| {
            let mut out = Vec::with_capacity(items.len() + 1);
            out.push(atom(tag));
            for item in items {
                out.push(walk.emit(item, depth + 1)?);
            }
            Ok::<_, JellyError>(Element::List(out))
        };
        Ok(match value {
            Value::None => Element::List(vec![atom(b"None")]),
            Value::Bool(b) => Element::List(vec![
                atom(b"boolean"),
                atom(if *b { b"true" } else { b"false" }),
            ]),
            Value::Int(i) => Element::Int(*i),
            Value::BigInt(b) => Element::from(b.clone()),
            Value::Float(f) => Element::Float(*f),
            Value::Bytes(b) => Element::Bytes(b.clone()),
            Value::Str(s) => Element::List(vec![
                atom(b"unicode"),
                Element::Bytes(Bytes::copy_from_slice(s.as_bytes())),
            ]),
            Value::List(v) => items(b"list", self, v)?,
            Value::Tuple(v) => items(b"tuple", self, v)?,
            Value::Set(v) => items(b"set", self, v)?,
            Value::FrozenSet(v) => items(b"frozenset", self, v)?,
            Value::Dict(pairs) => {
                let mut out = Vec::with_capacity(pairs.len() + 1);
                out.push(atom(b"dictionary"));
                for (k, v) in pairs {
                    let k = self.emit(k, depth + 1)?;
                    let v = self.emit(v, depth + 1)?;
                    out.push(Element::List(vec![k, v]));
                }
                Element::List(out)
            }
            Value::Decimal(d) => Element::List(vec![
                atom(b"decimal"),
                Element::from(d.coefficient.clone()),
                Element::Int(d.exponent),
            ]),
            Value::DateTime(dt) => text(
                b"datetime",
                &[&date_fields(&dt.date)[..], &time_fields(&dt.time)[..]].concat(),
            ),
            Value::Date(d) => text(b"date", &date_fields(d)),
            Value::Time(t) => text(b"time", &time_fields(t)),
            Value::TimeDelta(td) => text(b"timedelta", &[td.days, td.seconds, td.microseconds]),
            Value::Instance { tag, state } => Element::List(vec![
                Element::Bytes(tag.clone()),
                self.emit(state, depth + 1)?,
            ]),
            Value::Cache { tag, luid, state } => Element::List(vec![
                Element::Bytes(tag.clone()),
                Element::Int(*luid),
                self.emit(state, depth + 1)?,
            ]),
            Value::Remote(id) => flavor(b"remote", id),
            Value::Local(id) => flavor(b"local", id),
            Value::Cached(id) => flavor(b"cached", id),
            Value::LCache(id) => flavor(b"lcache", id),
            Value::Unpersistable(reason) => {
                Element::List(vec![atom(b"unpersistable"), Element::Bytes(reason.clone())])
            }
            Value::Shared(id) => {
                let node = self.node(*id)?;
                let refid = self.refs.get(id.0).copied().flatten();
                match refid {
                    None => self.emit(node, depth + 1)?,
                    Some(n) => {
                        let emitted = self
                            .emitted
                            .get_mut(id.0)
                            .ok_or(JellyError::NoSuchNode(*id))?;
                        if *emitted {
                            Element::List(vec![atom(b"dereference"), Element::Int(n)])
                        } else {
                            *emitted = true;
                            let body = self.emit(node, depth + 1)?;
                            Element::List(vec![atom(b"reference"), Element::Int(n), body])
                        }
                    }
                }
            }
        })
    }
}

fn date_fields(d: &Date) -> [i64; 3] {
    [i64::from(d.year), i64::from(d.month), i64::from(d.day)]
}

fn time_fields(t: &Time) -> [i64; 4] {
    [
        i64::from(t.hour),
        i64::from(t.minute),
        i64::from(t.second),
        i64::from(t.microsecond),
    ]
}

/// `[tag, "f1 f2 ..."]`, the fields in decimal as Python's `str(int)`, joined by spaces.
fn text(tag: &'static [u8], fields: &[i64]) -> Element {
    let joined = fields
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    Element::List(vec![atom(tag), Element::Bytes(Bytes::from(joined))])
}

fn flavor(tag: &'static [u8], id: &ObjectId) -> Element {
    let id = match id {
        ObjectId::Num(n) => Element::Int(*n),
        ObjectId::Name(b) => Element::Bytes(b.clone()),
    };
    Element::List(vec![atom(tag), id])
}
