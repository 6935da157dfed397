//! [`Value`], [`Graph`] and the small types they hold.

use bytes::Bytes;

use crate::banana::{BigInt, Element};

/// A node of a [`Graph`]: a value reachable from several places, or from itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// The id of an object in a Perspective Broker flavor: a broker's local id (`luid`), or the
/// name of a named object such as `b"root"` (a `RemoteReference` to the root sent back home is
/// `["local", b"root"]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectId {
    /// A numeric luid, as `Broker.newLocalID` gives.
    Num(i64),
    /// A named object.
    Name(Bytes),
}

/// A Python `decimal.Decimal`: `coefficient * 10**exponent`, as Jelly sends it
/// (`["decimal", coefficient, exponent]`; `1.25` is `125, -2`). Trailing zeros are kept
/// (`1.50` is `150, -2`); Jelly cannot carry NaN, infinities or the sign of a zero.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// The digits, with the sign.
    pub coefficient: BigInt,
    /// The power of ten.
    pub exponent: i64,
}

/// A naive `datetime.datetime`, sent as `["datetime", "Y M D h m s us"]`. Each field is checked
/// against its range as Python does, but the day is not checked against the month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTime {
    /// The date.
    pub date: Date,
    /// The time of day.
    pub time: Time,
}

/// A `datetime.date`, sent as `["date", "Y M D"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Date {
    /// 1 to 9999.
    pub year: u16,
    /// 1 to 12.
    pub month: u8,
    /// 1 to 31.
    pub day: u8,
}

/// A naive `datetime.time`, sent as `["time", "h m s us"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Time {
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
    /// 0 to 59.
    pub second: u8,
    /// 0 to 999 999.
    pub microsecond: u32,
}

/// A `datetime.timedelta`, sent as `["timedelta", "days seconds microseconds"]`. The fields
/// are kept as sent; Python normalises them when it builds the timedelta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TimeDelta {
    /// Days (negative for a negative delta).
    pub days: i64,
    /// Seconds, 0 to 86 399 when normalised.
    pub seconds: i64,
    /// Microseconds, 0 to 999 999 when normalised.
    pub microseconds: i64,
}

/// A value Jelly carries. Containers nest directly; a container shared within one message,
/// or part of a cycle, is a node of the enclosing [`Graph`], reached through
/// [`Value::Shared`].
///
/// Equality is structural and compares [`Value::Shared`] by node id; a NaN float is not equal
/// to itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// `None`: `["None"]`.
    #[default]
    None,
    /// A `bool`: `["boolean", b"true" | b"false"]`.
    Bool(bool),
    /// An `int` that fits an `i64`: sent bare.
    Int(i64),
    /// An `int` beyond `i64`: sent bare (up to 448 bits with Banana's default prefix limit).
    BigInt(BigInt),
    /// A `float`: sent bare.
    Float(f64),
    /// `bytes`: sent bare.
    Bytes(Bytes),
    /// A `str`: `["unicode", utf8]`.
    Str(String),
    /// A `list`: `["list", ...]`.
    List(Vec<Value>),
    /// A `tuple`: `["tuple", ...]`.
    Tuple(Vec<Value>),
    /// A `dict` in insertion order, any keys: `["dictionary", [k, v], ...]`.
    Dict(Vec<(Value, Value)>),
    /// A `set`, in the order sent: `["set", ...]`.
    Set(Vec<Value>),
    /// A `frozenset`, in the order sent: `["frozenset", ...]`.
    FrozenSet(Vec<Value>),
    /// A `decimal.Decimal`: `["decimal", coefficient, exponent]`.
    Decimal(Decimal),
    /// A naive `datetime.datetime`.
    DateTime(DateTime),
    /// A `datetime.date`.
    Date(Date),
    /// A naive `datetime.time`.
    Time(Time),
    /// A `datetime.timedelta`.
    TimeDelta(TimeDelta),
    /// An instance or a Copyable: `[tag, state]`. `tag` is the class's qualified name or the
    /// Copyable's `getTypeToCopyFor()`; `state` is usually a dict with `str` keys. A
    /// `CopyableFailure` arrives as one, tagged `twisted.spread.pb.CopyableFailure`.
    Instance {
        /// The type tag.
        tag: Bytes,
        /// The state.
        state: Box<Value>,
    },
    /// A Cacheable sent for the first time on a broker: `[tag, luid, state]`.
    Cache {
        /// The type tag.
        tag: Bytes,
        /// The luid later `["cached", luid]` expressions name.
        luid: i64,
        /// The state.
        state: Box<Value>,
    },
    /// A Referenceable of the sender's: `["remote", luid]`.
    Remote(ObjectId),
    /// The receiver's own Referenceable coming home: `["local", luid]`.
    Local(ObjectId),
    /// A Cacheable of the sender's already cached here: `["cached", luid]`.
    Cached(ObjectId),
    /// The receiver's own Cacheable coming home: `["lcache", luid]`.
    LCache(ObjectId),
    /// Something the sender could not jelly: `["unpersistable", reason]`.
    Unpersistable(Bytes),
    /// An edge to a node of the enclosing [`Graph`].
    Shared(NodeId),
}

impl Value {
    /// The integer, if this is one that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is `bytes`.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value of the `str` key `key` (or the `bytes` key, as Python 2 peers send), if this
    /// is a dict that has one; the last one wins, as in Python.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(pairs) = self else {
            return None;
        };
        pairs.iter().rev().find_map(|(k, v)| match k {
            Value::Str(s) if s == key => Some(v),
            Value::Bytes(b) if b == key.as_bytes() => Some(v),
            _ => None,
        })
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<BigInt> for Value {
    /// A [`Value::Int`] when the value fits an `i64`, else a [`Value::BigInt`].
    fn from(v: BigInt) -> Self {
        match v.to_i64() {
            Some(i) => Value::Int(i),
            None => Value::BigInt(v),
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    /// A `str`.
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    /// A `str`.
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<Bytes> for Value {
    fn from(v: Bytes) -> Self {
        Value::Bytes(v)
    }
}

impl From<&[u8]> for Value {
    /// `bytes`.
    fn from(v: &[u8]) -> Self {
        Value::Bytes(Bytes::copy_from_slice(v))
    }
}

/// One message's value: a root and the nodes [`Value::Shared`] edges point to.
///
/// Nodes live in a `Vec` and are named by their index, so a cycle is a cycle of indices and
/// the graph owns everything it holds. A tree without sharing is a graph without nodes
/// (`Graph::from(value)`). A node that is not reachable from the root is not sent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    root: Value,
    nodes: Vec<Value>,
}

impl Graph {
    /// A graph with `root` and no nodes.
    pub fn new(root: Value) -> Self {
        Graph {
            root,
            nodes: Vec::new(),
        }
    }

    /// The root value.
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The root value, to change it.
    pub fn root_mut(&mut self) -> &mut Value {
        &mut self.root
    }

    /// Replaces the root value.
    pub fn set_root(&mut self, root: Value) {
        self.root = root;
    }

    /// Adds a node holding `value`; place [`Value::Shared`] with the id wherever it appears.
    pub fn add_node(&mut self, value: Value) -> NodeId {
        self.nodes.push(value);
        NodeId(self.nodes.len() - 1)
    }

    /// The value of node `id`.
    pub fn node(&self, id: NodeId) -> Option<&Value> {
        self.nodes.get(id.0)
    }

    /// The value of node `id`, to change it (to close a cycle, add the node first, then put
    /// edges to it inside its own value).
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Value> {
        self.nodes.get_mut(id.0)
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// `value`, or the node it is an edge to (once: a node never holds a bare edge). An edge
    /// to a missing node resolves to itself.
    pub fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value {
            Value::Shared(id) => self.node(*id).unwrap_or(value),
            other => other,
        }
    }

    /// Whether `self` and `other` are the same value: equal up to the numbering and order of
    /// nodes, with the same sharing and cycles, floats compared bit for bit (NaN equals the
    /// same NaN, `-0.0` differs from `0.0`). Nodes that are unreachable, or reached once, do
    /// not matter. A graph that cannot be jellied (an edge to a missing node, too deep) is
    /// equivalent to nothing.
    pub fn equivalent(&self, other: &Graph) -> bool {
        let config = super::JellyConfig::default();
        match (
            super::to_sexp(self, &config),
            super::to_sexp(other, &config),
        ) {
            (Ok(a), Ok(b)) => same_element(&a, &b),
            _ => false,
        }
    }

    /// The Perspective Broker flavors the graph holds ([`Value::Remote`], [`Value::Local`],
    /// [`Value::Cache`], [`Value::Cached`], [`Value::LCache`]): the root's first, depth
    /// first, then each node's in id order, so that a node's are listed once however often it
    /// is reached. A Cacheable's own state is searched too. The order depends only on the
    /// graph: two decodes of the same bytes list the same flavors in the same order.
    pub fn flavors(&self) -> Vec<&Value> {
        let mut found = Vec::new();
        let mut stack: Vec<&Value> = Vec::new();
        for start in std::iter::once(&self.root).chain(self.nodes.iter()) {
            stack.push(start);
            while let Some(v) = stack.pop() {
                match v {
                    Value::Remote(_) | Value::Local(_) | Value::Cached(_) | Value::LCache(_) => {
                        found.push(v)
                    }
                    Value::Cache { state, .. } => {
                        found.push(v);
                        stack.push(state);
                    }
                    Value::Instance { state, .. } => stack.push(state),
                    Value::List(items)
                    | Value::Tuple(items)
                    | Value::Set(items)
                    | Value::FrozenSet(items) => stack.extend(items.iter().rev()),
                    Value::Dict(pairs) => {
                        for (k, v) in pairs.iter().rev() {
                            stack.push(v);
                            stack.push(k);
                        }
                    }
                    _ => {}
                }
            }
        }
        found
    }

    /// The root and the nodes, taken apart.
    pub fn into_parts(self) -> (Value, Vec<Value>) {
        (self.root, self.nodes)
    }

    /// A graph of `root` and `nodes`; [`to_sexp`](super::to_sexp) checks the edges.
    pub fn from_parts(root: Value, nodes: Vec<Value>) -> Self {
        Graph { root, nodes }
    }
}

impl From<Value> for Graph {
    fn from(root: Value) -> Self {
        Graph::new(root)
    }
}

/// Element equality with floats compared bit for bit.
fn same_element(a: &Element, b: &Element) -> bool {
    match (a, b) {
        (Element::Float(x), Element::Float(y)) => x.to_bits() == y.to_bits(),
        (Element::List(x), Element::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_element(a, b))
        }
        (a, b) => a == b,
    }
}
