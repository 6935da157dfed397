//! [`from_sexp`]: an s-expression to a [`Graph`], as Twisted's `unjelly()` reads it, without
//! ever importing or instantiating anything.

use std::collections::HashMap;

use bytes::Bytes;

use super::value::{Date, DateTime, Decimal, Graph, NodeId, ObjectId, Time, TimeDelta, Value};
use super::{JellyConfig, JellyError};
use crate::banana::{BigInt, Element};

/// The value `sexp` jellies, with its shared and cyclic containers as nodes of the graph.
///
/// Reference numbers become nodes in the order they are first mentioned; a `dereference` may
/// come before its `reference` (Twisted accepts it too), but every one must be defined by the
/// end. Type tags Jelly defines are checked for shape; any other tag is an instance
/// (`[tag, state]`) or a Cacheable (`[tag, luid, state]`), kept as data.
pub fn from_sexp(sexp: &Element, config: &JellyConfig) -> Result<Graph, JellyError> {
    let mut u = Unjellier {
        config,
        nodes: Vec::new(),
        refs: HashMap::new(),
    };
    let root = u.value(sexp, 0)?;
    let mut nodes = Vec::with_capacity(u.nodes.len());
    for (refid, value) in u.nodes {
        nodes.push(value.ok_or(JellyError::DanglingReference(refid))?);
    }
    Ok(Graph::from_parts(root, nodes))
}

struct Unjellier<'a> {
    config: &'a JellyConfig,
    /// Each node's reference number and, once its `reference` is read, its value.
    nodes: Vec<(i64, Option<Value>)>,
    refs: HashMap<i64, NodeId>,
}

impl Unjellier<'_> {
    fn value(&mut self, e: &Element, depth: usize) -> Result<Value, JellyError> {
        if depth >= self.config.max_depth {
            return Err(JellyError::TooDeep {
                limit: self.config.max_depth,
            });
        }
        Ok(match e {
            Element::Int(i) => Value::Int(*i),
            Element::BigInt(b) => Value::from(b.clone()),
            Element::Float(f) => Value::Float(*f),
            Element::Bytes(b) => Value::Bytes(b.clone()),
            Element::List(items) => self.expr(items, depth)?,
        })
    }

    fn values(&mut self, items: &[Element], depth: usize) -> Result<Vec<Value>, JellyError> {
        items.iter().map(|e| self.value(e, depth + 1)).collect()
    }

    /// The node of reference number `refid`, made on first mention.
    fn node_for(&mut self, refid: i64) -> Result<NodeId, JellyError> {
        if let Some(id) = self.refs.get(&refid) {
            return Ok(*id);
        }
        if self.refs.len() >= self.config.max_references {
            return Err(JellyError::TooManyReferences {
                limit: self.config.max_references,
            });
        }
        let id = NodeId(self.nodes.len());
        self.nodes.push((refid, None));
        self.refs.insert(refid, id);
        Ok(id)
    }

    fn expr(&mut self, items: &[Element], depth: usize) -> Result<Value, JellyError> {
        let (tag, args) = items.split_first().ok_or(JellyError::EmptyList)?;
        let tag = tag.as_bytes().ok_or(JellyError::TagNotBytes)?;
        let malformed = |reason: &'static str| JellyError::Malformed {
            tag: tag.clone(),
            reason,
        };
        Ok(match (&tag[..], args) {
            (b"None", []) => Value::None,
            (b"unicode", [Element::Bytes(b)]) => Value::Str(
                std::str::from_utf8(b)
                    .map_err(JellyError::BadUtf8)?
                    .to_owned(),
            ),
            (b"boolean", [Element::Bytes(b)]) => match &b[..] {
                b"true" => Value::Bool(true),
                b"false" => Value::Bool(false),
                _ => return Err(malformed("neither true nor false")),
            },
            (b"list", items) => Value::List(self.values(items, depth)?),
            (b"tuple", items) => Value::Tuple(self.values(items, depth)?),
            (b"set", items) => Value::Set(self.values(items, depth)?),
            (b"frozenset", items) => Value::FrozenSet(self.values(items, depth)?),
            (b"dictionary", pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for pair in pairs {
                    let Element::List(kv) = pair else {
                        return Err(malformed("an entry is not a list"));
                    };
                    let [k, v] = &kv[..] else {
                        return Err(malformed("an entry is not a key and a value"));
                    };
                    out.push((self.value(k, depth + 1)?, self.value(v, depth + 1)?));
                }
                Value::Dict(out)
            }
            (b"decimal", [coefficient, Element::Int(exponent)]) => {
                let coefficient = match coefficient {
                    Element::Int(i) => BigInt::from(*i),
                    Element::BigInt(b) => b.clone(),
                    _ => return Err(malformed("the coefficient is not an integer")),
                };
                Value::Decimal(Decimal {
                    coefficient,
                    exponent: *exponent,
                })
            }
            (b"datetime", [Element::Bytes(text)]) => {
                let f = fields(text, 3, 7).ok_or_else(|| malformed("bad fields"))?;
                let date = date(&f).ok_or_else(|| malformed("a field is out of range"))?;
                let time = time(f.get(3..).unwrap_or(&[]))
                    .ok_or_else(|| malformed("a field is out of range"))?;
                Value::DateTime(DateTime { date, time })
            }
            (b"date", [Element::Bytes(text)]) => {
                let f = fields(text, 3, 3).ok_or_else(|| malformed("bad fields"))?;
                Value::Date(date(&f).ok_or_else(|| malformed("a field is out of range"))?)
            }
            (b"time", [Element::Bytes(text)]) => {
                let f = fields(text, 0, 4).ok_or_else(|| malformed("bad fields"))?;
                Value::Time(time(&f).ok_or_else(|| malformed("a field is out of range"))?)
            }
            (b"timedelta", [Element::Bytes(text)]) => {
                let f = fields(text, 3, 3).ok_or_else(|| malformed("bad fields"))?;
                match f[..] {
                    [days, seconds, microseconds] => Value::TimeDelta(TimeDelta {
                        days,
                        seconds,
                        microseconds,
                    }),
                    _ => return Err(malformed("bad fields")),
                }
            }
            (b"reference", [Element::Int(refid), body]) => {
                let id = self.node_for(*refid)?;
                if matches!(self.nodes.get(id.0), Some((_, Some(_)))) {
                    return Err(JellyError::DuplicateReference(*refid));
                }
                let value = self.value(body, depth + 1)?;
                if matches!(value, Value::Shared(_)) {
                    return Err(malformed("its body is a reference"));
                }
                let slot = self.nodes.get_mut(id.0).ok_or(JellyError::NoSuchNode(id))?;
                if slot.1.is_some() {
                    // Defined again inside its own body.
                    return Err(JellyError::DuplicateReference(*refid));
                }
                slot.1 = Some(value);
                Value::Shared(id)
            }
            (b"dereference", [Element::Int(refid)]) => Value::Shared(self.node_for(*refid)?),
            (b"remote", [id]) => Value::Remote(object_id(id).ok_or_else(|| malformed("bad id"))?),
            (b"local", [id]) => Value::Local(object_id(id).ok_or_else(|| malformed("bad id"))?),
            (b"cached", [id]) => Value::Cached(object_id(id).ok_or_else(|| malformed("bad id"))?),
            (b"lcache", [id]) => Value::LCache(object_id(id).ok_or_else(|| malformed("bad id"))?),
            (b"unpersistable", [Element::Bytes(reason)]) => Value::Unpersistable(reason.clone()),
            (b"class" | b"module" | b"function" | b"method" | b"instance" | b"persistent", _) => {
                return Err(JellyError::Insecure(tag.clone()));
            }
            (t, _) if super::is_builtin_tag(t) => return Err(malformed("wrong arguments")),
            (_, [state]) => Value::Instance {
                tag: tag.clone(),
                state: Box::new(self.value(state, depth + 1)?),
            },
            (_, [Element::Int(luid), state]) => Value::Cache {
                tag: tag.clone(),
                luid: *luid,
                state: Box::new(self.value(state, depth + 1)?),
            },
            _ => {
                return Err(malformed(
                    "an instance is [tag, state] and a cacheable [tag, luid, state]",
                ));
            }
        })
    }
}

fn object_id(e: &Element) -> Option<ObjectId> {
    match e {
        Element::Int(i) => Some(ObjectId::Num(*i)),
        Element::Bytes(b) => Some(ObjectId::Name(Bytes::clone(b))),
        _ => None,
    }
}

/// Space-separated decimal integers, `min` to `max` of them, as Python's `map(int, s.split())`.
fn fields(text: &[u8], min: usize, max: usize) -> Option<Vec<i64>> {
    let text = std::str::from_utf8(text).ok()?;
    let mut out = Vec::new();
    for word in text.split_ascii_whitespace() {
        if out.len() == max {
            return None;
        }
        out.push(word.parse().ok()?);
    }
    (out.len() >= min).then_some(out)
}

fn in_range<T: TryFrom<i64>>(v: i64, lo: i64, hi: i64) -> Option<T> {
    if (lo..=hi).contains(&v) {
        T::try_from(v).ok()
    } else {
        None
    }
}

fn date(f: &[i64]) -> Option<Date> {
    match f {
        [y, m, d, ..] => Some(Date {
            year: in_range(*y, 1, 9999)?,
            month: in_range(*m, 1, 12)?,
            day: in_range(*d, 1, 31)?,
        }),
        _ => None,
    }
}

/// The time of `f` (hour, minute, second, microsecond), the missing ones zero.
fn time(f: &[i64]) -> Option<Time> {
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(Time {
        hour: in_range(get(0), 0, 23)?,
        minute: in_range(get(1), 0, 59)?,
        second: in_range(get(2), 0, 59)?,
        microsecond: in_range(get(3), 0, 999_999)?,
    })
}
