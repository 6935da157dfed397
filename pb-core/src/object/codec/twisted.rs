//! The PB dialect's payloads: values to the Banana bytes of their Jelly and back, references
//! as flavors, errors as Twisted's `CopyableFailure`.
//!
//! A value sent over a Twisted PB connection goes through the Jelly serde format
//! ([`super::jelly`]) into a graph, whose references were exported (or sent home) by the
//! connection as they were met; the graph is encoded with the connection's Banana codec, so
//! what is over the peer's limits fails here, before anything is queued. A received value's
//! flavors are resolved by the driver when the message arrives (the imports counted then), in
//! the order [`Graph::flavors`] lists them; the references travel beside the bytes, and
//! decoding pairs them with the flavors again.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pb_proto::banana::{BananaCodec, Dialect, decode_complete};
use pb_proto::jelly::{self, Graph, JellyConfig, ObjectId, Value};
use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed};

use super::jelly::{
    CacheSend, FAILURE_TAG, Failure, JellyRefs, from_graph, from_graph_seed, to_graph,
};
use super::{CodecError, Payload};
use crate::link::TwistedLink;
use crate::object::{CallError, ObjectRef};

/// The sends of our objects counted while one value is jellied (its references exported as
/// they are met). They stand only once the value is queued for the peer
/// ([`PendingSends::sent`]): dropped before that (the value failed to encode, the call was
/// given up before it left, its answer was not wanted), they are taken back, as the peer never
/// heard of them and could never release them.
///
/// A Cacheable's state goes with every message jellied before one that carries it is queued
/// (see [`pb_proto::twisted::CacheSend`]): the messages may be queued in another order than
/// they were jellied, or dropped. As the payload is queued ([`PendingSends::settle`]), a
/// state that another message has brought meanwhile is taken out again (the Cacheable goes as
/// `["cached", luid]`, and the sends its state made are taken back).
pub(crate) struct PendingSends {
    link: Option<Arc<dyn TwistedLink>>,
    /// `(luid, cache)` of each send, in the order they were made; `None` once taken back.
    made: Vec<Option<(i64, bool)>>,
    /// The Cacheables whose states the value carries, in the order they were jellied.
    states: Vec<StateSent>,
    /// The value's graph, kept while it carries a state (to take the state out again).
    graph: Option<Box<Graph>>,
    /// Sends taken out of the value as it was queued: taken back when the payload goes.
    dropped: Vec<(i64, bool)>,
}

/// A Cacheable's state carried by a value: its luid, the cache's version it is, and the sends
/// the state made (`made[sends]`).
struct StateSent {
    luid: i64,
    version: u64,
    sends: std::ops::Range<usize>,
}

impl PendingSends {
    /// The value is about to be queued: the Cacheables whose state a message already queued
    /// carried (`queued(luid)`) go as `["cached", luid]` instead, re-encoded with `encode`
    /// (a state held in one taken out goes with it). A state stays only if taking it out
    /// would leave a `["cached", luid]` in the value naming a state that neither the value
    /// nor a queued message brings (one held in it and named again later in the value): the
    /// Cacheable then goes with its state twice, the peer keeping the later copy.
    pub(crate) fn settle(
        &mut self,
        queued: impl Fn(i64) -> bool,
        encode: impl FnOnce(&Graph) -> Result<Bytes, CodecError>,
    ) -> Option<Bytes> {
        let whole = self.graph.as_deref()?;
        let states = &self.states;
        let within = |outer: usize, inner: usize| {
            let (o, i) = (&states[outer].sends, &states[inner].sends);
            outer != inner && o.start <= i.start && i.end <= o.end
        };
        let mut out: Vec<usize> = (0..states.len())
            .filter(|&i| queued(states[i].luid))
            .collect();
        let (graph, gone) = loop {
            if out.is_empty() {
                return None;
            }
            let mut graph = whole.clone();
            for &i in &out {
                cached_instead(graph.root_mut(), states[i].luid);
            }
            // The states taken out, with those held in them.
            let gone: Vec<usize> = (0..states.len())
                .filter(|&j| out.iter().any(|&i| i == j || within(i, j)))
                .collect();
            let mut named = Vec::new();
            cached_luids(graph.root(), &mut named);
            let dangling: Vec<i64> = named
                .into_iter()
                .filter(|&luid| {
                    !queued(luid)
                        && !(0..states.len()).any(|j| states[j].luid == luid && !gone.contains(&j))
                })
                .collect();
            if dangling.is_empty() {
                break (graph, gone);
            }
            let before = out.len();
            out.retain(|&i| {
                !(0..states.len()).any(|j| within(i, j) && dangling.contains(&states[j].luid))
            });
            if out.len() == before {
                return None;
            }
        };
        let bytes = encode(&graph).ok()?;
        for &j in gone.iter().rev() {
            let StateSent { sends, .. } = self.states.remove(j);
            if out.contains(&j) {
                for send in self.made.get_mut(sends).into_iter().flatten() {
                    self.dropped.extend(send.take());
                }
            }
        }
        Some(bytes)
    }

    /// The value is queued for the peer: its sends stand; `state(luid, version)` is told of
    /// each Cacheable whose state it carries.
    pub(crate) fn sent(&mut self, mut state: impl FnMut(i64, u64)) {
        self.made.clear();
        for s in self.states.drain(..) {
            state(s.luid, s.version);
        }
        self.graph = None;
    }
}

/// Replaces the first `[tag, luid, state]` in `v` (in the order it is written) with
/// `["cached", luid]`.
fn cached_instead(v: &mut Value, luid: i64) -> bool {
    match v {
        Value::Cache { luid: l, .. } if *l == luid => {
            *v = Value::Cached(ObjectId::Num(luid));
            true
        }
        Value::Cache { state, .. } | Value::Instance { state, .. } => cached_instead(state, luid),
        Value::List(items) | Value::Tuple(items) | Value::Set(items) | Value::FrozenSet(items) => {
            items.iter_mut().any(|x| cached_instead(x, luid))
        }
        Value::Dict(pairs) => pairs
            .iter_mut()
            .any(|(k, x)| cached_instead(k, luid) || cached_instead(x, luid)),
        _ => false,
    }
}

/// The luids `v` names as `["cached", luid]`, in the order they are written.
fn cached_luids(v: &Value, out: &mut Vec<i64>) {
    match v {
        Value::Cached(ObjectId::Num(luid)) => out.push(*luid),
        Value::Cache { state, .. } | Value::Instance { state, .. } => cached_luids(state, out),
        Value::List(items) | Value::Tuple(items) | Value::Set(items) | Value::FrozenSet(items) => {
            items.iter().for_each(|x| cached_luids(x, out))
        }
        Value::Dict(pairs) => pairs.iter().for_each(|(k, x)| {
            cached_luids(k, out);
            cached_luids(x, out);
        }),
        _ => {}
    }
}

impl Drop for PendingSends {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            let back: Vec<(i64, bool)> = self
                .dropped
                .drain(..)
                .chain(self.made.drain(..).flatten())
                .collect();
            if !back.is_empty() {
                link.take_back(&back);
            }
        }
    }
}

/// Records the sends made while a value is jellied (see [`PendingSends`]).
struct Sends<'a> {
    link: &'a dyn TwistedLink,
    made: RefCell<Vec<Option<(i64, bool)>>>,
    states: RefCell<Vec<StateSent>>,
}

impl<'a> Sends<'a> {
    fn new(link: &'a dyn TwistedLink) -> Self {
        Sends {
            link,
            made: RefCell::new(Vec::new()),
            states: RefCell::new(Vec::new()),
        }
    }

    /// The value's bytes, with the sends it made pending (and its graph, if it carries a
    /// Cacheable's state).
    fn payload(self, bytes: Bytes, graph: Graph) -> Payload {
        let made = std::mem::take(&mut *self.made.borrow_mut());
        let states = std::mem::take(&mut *self.states.borrow_mut());
        let link = match made.iter().any(Option::is_some) {
            true => self.link.owned(),
            false => None,
        };
        let graph = (!states.is_empty()).then(|| Box::new(graph));
        Payload::jelly(
            bytes,
            PendingSends {
                link,
                made,
                states,
                graph,
                dropped: Vec::new(),
            },
        )
    }
}

impl Drop for Sends<'_> {
    /// The value was not encoded after all: its sends are taken back at once.
    fn drop(&mut self) {
        let made: Vec<(i64, bool)> = self.made.get_mut().drain(..).flatten().collect();
        if !made.is_empty() {
            self.link.take_back(&made);
        }
    }
}

impl JellyRefs for Sends<'_> {
    fn export(&self, r: &ObjectRef) -> Result<Value, String> {
        let flavor = self.link.refs().export(r)?;
        if let Value::Remote(ObjectId::Num(luid)) = flavor {
            self.made.borrow_mut().push(Some((luid, false)));
        }
        Ok(flavor)
    }

    fn import(&self, flavor: &Value) -> Result<ObjectRef, String> {
        self.link.refs().import(flavor)
    }

    fn mark(&self) -> usize {
        self.made.borrow().len()
    }

    fn export_cache(
        &self,
        r: &ObjectRef,
        state_from: usize,
        version: u64,
    ) -> Result<CacheSend, String> {
        let mut send = self.link.refs().export_cache(r, state_from, version)?;
        let mut states = self.states.borrow_mut();
        let mut made = self.made.borrow_mut();
        // Once in a value is enough: the peer reads it in order.
        send.with_state &= !states.iter().any(|s| s.luid == send.luid);
        if send.with_state {
            states.push(StateSent {
                luid: send.luid,
                version,
                sends: state_from..made.len(),
            });
        } else {
            // The state jellied for it does not go: neither do the sends it made.
            states.retain(|s| s.sends.start < state_from);
            let back: Vec<(i64, bool)> = made.drain(state_from..).flatten().collect();
            if !back.is_empty() {
                self.link.take_back(&back);
            }
        }
        made.push(Some((send.luid, true)));
        Ok(send)
    }
}

/// Encodes `value` for the PB connection `link`: exports its references, jellies it and
/// encodes it under the connection's limits. The exports stand once the payload is sent (see
/// [`PendingSends`]).
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    link: &dyn TwistedLink,
) -> Result<Payload, CodecError> {
    let sends = Sends::new(link);
    let graph = to_graph(value, Some(&sends))?;
    let bytes = encode_graph(&graph, link)?;
    Ok(sends.payload(bytes, graph))
}

/// Encodes a call's arguments (a tuple of the method's parameters) for `link`: always a
/// Jelly tuple, as PB's `message` carries (a method without parameters sends `()`, which
/// serde writes as a unit).
pub(crate) fn encode_args<T: Serialize + ?Sized>(
    args: &T,
    link: &dyn TwistedLink,
) -> Result<Payload, CodecError> {
    let sends = Sends::new(link);
    let mut graph = to_graph(args, Some(&sends))?;
    match graph.root() {
        Value::Tuple(_) => {}
        Value::None => graph.set_root(Value::Tuple(Vec::new())),
        _ => {
            let one = std::mem::take(graph.root_mut());
            graph.set_root(Value::Tuple(vec![one]));
        }
    }
    let bytes = encode_graph(&graph, link)?;
    Ok(sends.payload(bytes, graph))
}

fn encode_graph(graph: &Graph, link: &dyn TwistedLink) -> Result<Bytes, CodecError> {
    encode_graph_with(graph, &link.jelly_config(), &link.encoder())
}

/// How deep a value lies in the message that carries it: a call's arguments, an answer, a
/// failure and a cache update are each one element of the message's list.
pub(crate) const PAYLOAD_DEPTH: usize = 1;

/// A graph's Banana bytes under a connection's Jelly config and Banana codec, held to the
/// limits at the depth it is sent at (the peer's decoder counts the message's list too).
pub(crate) fn encode_graph_with(
    graph: &Graph,
    config: &JellyConfig,
    encoder: &BananaCodec,
) -> Result<Bytes, CodecError> {
    let sexp = jelly::to_sexp(graph, config).map_err(|e| CodecError::Encode(e.to_string()))?;
    let mut out = BytesMut::new();
    encoder
        .encode_nested(&sexp, &mut out, PAYLOAD_DEPTH)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out.freeze())
}

/// The Banana bytes of the failure that an error `e` of a method crosses as: `e` itself when
/// it is a [`Failure`], else a failure whose type is `E`'s Rust path (`::` written `.`) and
/// whose message is `e`'s value as text.
pub(crate) fn encode_failure<E: Serialize>(
    e: &E,
    link: &dyn TwistedLink,
) -> Result<Payload, CodecError> {
    let sends = Sends::new(link);
    let graph = to_graph(e, Some(&sends))?;
    if let Value::Instance { tag, .. } = graph.root()
        && &tag[..] == FAILURE_TAG.as_bytes()
    {
        let bytes = encode_graph(&graph, link)?;
        return Ok(sends.payload(bytes, graph));
    }
    // Only the error's text is sent: what it referred to is not (`sends` takes it back).
    let type_name = std::any::type_name::<E>().replace("::", ".");
    let failure = Failure::new(type_name, text(&graph, graph.root(), 0));
    encode(&failure, link)
}

/// The longest text [`text`] makes of a value, in bytes: the value comes from the peer, and
/// a graph that names one node many times (each name a few bytes on the wire) would otherwise
/// be written out once per name.
pub(crate) const MAX_TEXT: usize = 16 * 1024;

/// A value as a line of text, Python's `repr` for the common cases; at most [`MAX_TEXT`]
/// bytes and then `...`, however often the graph names its shared nodes.
pub(crate) fn text(graph: &Graph, v: &Value, depth: usize) -> String {
    let mut out = String::new();
    write_text(&mut out, graph, v, depth);
    if out.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

/// Appends `v`'s text to `out`, stopping once `out` is past [`MAX_TEXT`]: every value visited
/// writes at least a byte, so the values visited are bounded too.
fn write_text(out: &mut String, graph: &Graph, v: &Value, depth: usize) {
    use std::fmt::Write;
    if out.len() > MAX_TEXT {
        return;
    }
    if depth > 8 {
        out.push_str("...");
        return;
    }
    let seq = |out: &mut String, items: &[Value], open: &str, close: &str| {
        out.push_str(open);
        for (i, item) in items.iter().enumerate() {
            if out.len() > MAX_TEXT {
                return;
            }
            if i > 0 {
                out.push_str(", ");
            }
            write_text(out, graph, item, depth + 1);
        }
        out.push_str(close);
    };
    // A string longer than the room left is cut (the caller cuts the whole to the limit and
    // marks it). The room reaches a character's width past the limit, so that a string cut
    // back to a character boundary still leaves the text past it, where `text` sees the cut.
    let room = MAX_TEXT + 4 - out.len();
    let cut = |s: &str| -> usize {
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        end
    };
    let pair = |out: &mut String, k: &Value, v: &Value| {
        write_text(out, graph, k, depth + 1);
        out.push_str(": ");
        write_text(out, graph, v, depth + 1);
    };
    // Writing to a `String` cannot fail.
    let _ = match graph.resolve(v) {
        Value::Str(s) if depth == 0 => {
            out.push_str(&s[..cut(s)]);
            Ok(())
        }
        Value::Str(s) => write!(out, "{:?}", &s[..cut(s)]),
        Value::Bytes(b) => write!(
            out,
            "b{:?}",
            String::from_utf8_lossy(&b[..b.len().min(room)])
        ),
        Value::None => write!(out, "None"),
        Value::Bool(true) => write!(out, "True"),
        Value::Bool(false) => write!(out, "False"),
        Value::Int(i) => write!(out, "{i}"),
        Value::BigInt(i) => write!(out, "{i}"),
        Value::Float(f) => write!(out, "{f}"),
        Value::List(items) => {
            seq(out, items, "[", "]");
            Ok(())
        }
        Value::Tuple(items) => {
            seq(out, items, "(", ")");
            Ok(())
        }
        Value::Set(items) | Value::FrozenSet(items) => {
            seq(out, items, "{", "}");
            Ok(())
        }
        // An enum's variant with its fields: `Variant: fields`.
        Value::Dict(pairs) if depth == 0 && pairs.len() == 1 => {
            match &pairs[0] {
                (Value::Str(k), v) => {
                    out.push_str(&k[..cut(k)]);
                    out.push_str(": ");
                    write_text(out, graph, v, depth + 1);
                }
                (k, v) => {
                    out.push('{');
                    pair(out, k, v);
                    out.push('}');
                }
            }
            Ok(())
        }
        Value::Dict(pairs) => {
            out.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if out.len() > MAX_TEXT {
                    return;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                pair(out, k, v);
            }
            out.push('}');
            Ok(())
        }
        other => {
            let debug = format!("{other:?}");
            out.push_str(&debug[..cut(&debug)]);
            Ok(())
        }
    };
}

/// A cache update as the `observe_*` call a Twisted PB copy receives: an enum variant's name
/// is the method, its fields the arguments (a unit variant has none, a newtype variant its
/// one value, a tuple variant its fields); any other value is `observe_update(value)`.
pub(crate) fn observe_call<U: Serialize + ?Sized>(
    update: &U,
) -> Result<(String, Graph), CodecError> {
    let graph = to_graph(update, None)?;
    let (root, nodes) = graph.into_parts();
    let (method, args) = match root {
        Value::Str(name) => (name, Vec::new()),
        Value::Dict(mut pairs) if pairs.len() == 1 => match pairs.pop() {
            Some((Value::Str(name), Value::Tuple(fields))) => (name, fields),
            Some((Value::Str(name), value)) => (name, vec![value]),
            Some((k, v)) => ("update".to_owned(), vec![Value::Dict(vec![(k, v)])]),
            None => ("update".to_owned(), Vec::new()),
        },
        other => ("update".to_owned(), vec![other]),
    };
    Ok((method, Graph::from_parts(Value::Tuple(args), nodes)))
}

/// The cache update an `observe_<method>(*args)` call stands for: the inverse of
/// [`observe_call`] (no arguments: the unit variant `method`; one: its newtype variant; more:
/// its tuple variant).
pub(crate) fn update_of<U: DeserializeOwned>(
    method: &str,
    args: &Graph,
    limits: (usize, usize),
) -> Result<U, CodecError> {
    let items = match args.root() {
        Value::Tuple(items) => items.clone(),
        other => vec![other.clone()],
    };
    let name = Value::Str(method.to_owned());
    let root = match items.len() {
        0 => name,
        1 => Value::Dict(vec![(name, items.into_iter().next().unwrap_or_default())]),
        _ => Value::Dict(vec![(name, Value::Tuple(items))]),
    };
    let (_, nodes) = args.clone().into_parts();
    from_graph(&Graph::from_parts(root, nodes), None, limits)
}

/// Decodes received Banana bytes (re-encoded by the driver from what arrived) into a graph.
pub(crate) fn decode_graph(payload: &[u8], link: &dyn TwistedLink) -> Result<Graph, CodecError> {
    let config = *link.encoder().config();
    let sexp = decode_complete(payload, config, Dialect::Pb)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    jelly::from_sexp(&sexp, &link.jelly_config()).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Which object a flavor names, for pairing flavors with the references resolved for them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FlavorKey {
    Remote(ObjectId),
    Local(ObjectId),
    Cache(i64),
    LCache(ObjectId),
}

fn key(flavor: &Value) -> Option<FlavorKey> {
    Some(match flavor {
        Value::Remote(id) => FlavorKey::Remote(id.clone()),
        Value::Local(id) => FlavorKey::Local(id.clone()),
        Value::Cache { luid, .. } => FlavorKey::Cache(*luid),
        Value::Cached(ObjectId::Num(luid)) => FlavorKey::Cache(*luid),
        Value::LCache(id) => FlavorKey::LCache(id.clone()),
        _ => return None,
    })
}

/// The references resolved for one received message's flavors.
pub(crate) struct MessageRefs {
    refs: Vec<(FlavorKey, ObjectRef)>,
}

impl MessageRefs {
    /// Pairs `refs` (resolved in the order [`Graph::flavors`] lists them) with the flavors
    /// of `graph`.
    pub(crate) fn pair(graph: &Graph, refs: Vec<ObjectRef>) -> MessageRefs {
        MessageRefs {
            refs: graph
                .flavors()
                .into_iter()
                .filter_map(key)
                .zip(refs)
                .collect(),
        }
    }

    /// The references, to keep them alive (an answer is queued before the references of the
    /// call it answers are released).
    pub(crate) fn refs(&self) -> Vec<ObjectRef> {
        self.refs.iter().map(|(_, r)| r.clone()).collect()
    }
}

impl JellyRefs for MessageRefs {
    fn export(&self, _: &ObjectRef) -> Result<Value, String> {
        Err("a received message exports nothing".to_owned())
    }

    fn import(&self, flavor: &Value) -> Result<ObjectRef, String> {
        let k = key(flavor).ok_or_else(|| format!("{flavor:?} is not a reference"))?;
        self.refs
            .iter()
            .find(|(f, _)| *f == k)
            .map(|(_, r)| r.clone())
            .ok_or_else(|| format!("no reference was resolved for {flavor:?}"))
    }
}

/// The arguments of a call that came over a PB connection.
pub(crate) struct JellyArgs {
    /// The arguments tuple.
    pub(crate) graph: Graph,
    /// Its references.
    pub(crate) refs: MessageRefs,
    /// The connection's [`JellyConfig::max_copied_size`](jelly::JellyConfig::max_copied_size).
    pub(crate) max_copied: usize,
}

/// Decodes a call's arguments.
pub(crate) fn decode_args<S, V>(
    args: &JellyArgs,
    max_depth: usize,
    seed: S,
) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    let limits = (max_depth, args.max_copied);
    from_graph_seed(&args.graph, Some(&args.refs), limits, seed)
}

/// Decodes an answer's value: the bytes and the references resolved for its flavors.
pub(crate) fn decode_seed<S, V>(
    payload: &[u8],
    refs: Vec<ObjectRef>,
    link: &dyn TwistedLink,
    max_depth: usize,
    seed: S,
) -> Result<V, CodecError>
where
    S: for<'de> DeserializeSeed<'de, Value = V>,
{
    let graph = decode_graph(payload, link)?;
    let refs = MessageRefs::pair(&graph, refs);
    let limits = (max_depth, link.jelly_config().max_copied_size);
    from_graph_seed(&graph, Some(&refs), limits, seed)
}

/// What an `error` answer becomes for a caller whose method's error type is `E`: `E` itself
/// when the failure decodes as one (as [`Failure`] always does), else `E` from the failure's
/// message, else the system error the failure's type names.
pub(crate) fn decode_error<E: DeserializeOwned>(
    payload: &[u8],
    refs: Vec<ObjectRef>,
    link: &dyn TwistedLink,
    max_depth: usize,
) -> CallError<E> {
    let graph = match decode_graph(payload, link) {
        Ok(g) => g,
        Err(e) => return CallError::BadAnswer(format!("cannot decode the failure: {e}")),
    };
    let refs = MessageRefs::pair(&graph, refs);
    let limits = (max_depth, link.jelly_config().max_copied_size);
    if let Ok(e) = from_graph::<E>(&graph, Some(&refs), limits) {
        return CallError::Remote(e);
    }
    let failure = match from_graph::<Failure>(&graph, Some(&refs), limits) {
        Ok(f) => f,
        // Twisted may send an exception object itself when it is jellyable.
        Err(_) => return CallError::Internal(text(&graph, graph.root(), 0)),
    };
    let message = Graph::new(Value::Str(failure.value.clone()));
    if let Ok(e) = from_graph::<E>(&message, None, limits) {
        return CallError::Remote(e);
    }
    if failure.check("twisted.spread.flavors.NoSuchMethod") {
        CallError::NoSuchMethod(failure.to_string())
    } else if failure.value == "Invalid Object ID" {
        CallError::NoSuchObject(failure.to_string())
    } else {
        CallError::Internal(failure.to_string())
    }
}
