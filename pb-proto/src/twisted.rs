//! Twisted's Perspective Broker protocol, the PB dialect, as a state machine with no I/O.
//!
//! A [`Broker`] is one PB connection's protocol state: the Banana dialect handshake, the
//! `version` exchange, the request ids of our calls and their answer slots, the objects we
//! export (luids, reference counts, names such as `root`), the references we hold to the
//! peer's objects (how many `decref`s we owe), the calls the peer has running here, and the
//! bytes queued for the peer. The driver feeds it bytes ([`Broker::poll_input`]) and takes
//! bytes out ([`Broker::take_output`]); values inside messages stay Banana [`Element`]s, which
//! the driver turns into Jelly values and the application's types.
//!
//! The broker keeps two kinds of driver tokens and never calls into them: `O`, an exported
//! object (compared and hashed, so that the same object exported twice has one luid, as
//! Twisted's `processUniqueID` gives), and `W`, what wakes a caller waiting for an answer.
//!
//! # What differs from Twisted
//! - An answer or error for a request id we never used, and a `decref` or `decache` for a luid
//!   we do not export, are counted as violations (the connection closes after
//!   [`PbConfig::max_violations`]) instead of killing the connection at once.
//! - A call to an object that does not exist gets an error answer, as in Twisted; an unknown
//!   command gets `didNotUnderstand` (Twisted's own reply fails to encode and drops the
//!   connection) and counts as a violation.
//! - The peer's calls running at once are capped ([`PbConfig::max_in_flight_calls`]); one over
//!   the cap gets an error answer.

pub mod cred;

use std::collections::HashMap;
use std::hash::Hash;

use bytes::{Bytes, BytesMut};

use crate::banana::{BananaCodec, BananaCodecError, BananaConfig, Dialect, Element};
use crate::jelly::{Graph, JellyConfig, JellyError, Value};

/// The PB protocol version both sides send (`Broker.version` in Twisted).
pub const PROTOCOL_VERSION: i64 = 6;

/// Twisted's `MAX_BROKER_REFS`: the default of [`PbConfig::max_exports`].
pub const MAX_BROKER_REFS: usize = 1024;

/// The default of [`PbConfig::max_in_flight_calls`].
pub const DEFAULT_MAX_IN_FLIGHT_CALLS: usize = 1024;

/// How many of the peer's messages a broker holds back, for each call
/// [`PbConfig::max_in_flight_calls`] lets run, while its calls are at that cap and it reads on
/// for the answers to its own (see [`Broker::wants_input`]): a peer with this many times the
/// cap in flight still gets its answers through. Their bytes are held to
/// [`PbConfig::max_call_bytes`] as well.
pub const HELD_PER_CALL: usize = 16;

/// The default of [`PbConfig::max_violations`]: as Twisted, which closes after more than 3.
pub const DEFAULT_MAX_VIOLATIONS: u32 = 3;

/// The default of [`PbConfig::handshake_timeout`]: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The default of [`PbConfig::max_imports`]: distinct objects of the peer's we hold.
pub const DEFAULT_MAX_IMPORTS: usize = 65_536;

/// The limits of one PB connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PbConfig {
    /// Banana's limits (Twisted's 640 KiB strings and lists and 64 prefix bytes, plus pb's
    /// depth and expression size), on both directions.
    pub banana: BananaConfig,
    /// Jelly's limits on each message's value.
    pub jelly: JellyConfig,
    /// The most objects exported to the peer at once, root not counted (default
    /// [`MAX_BROKER_REFS`]); exporting one more fails that message.
    pub max_exports: usize,
    /// The most distinct objects of the peer's held at once (default [`DEFAULT_MAX_IMPORTS`]).
    pub max_imports: usize,
    /// The most of the peer's calls running here at once (default
    /// [`DEFAULT_MAX_IN_FLIGHT_CALLS`]).
    pub max_in_flight_calls: usize,
    /// The most bytes of the peer's calls (their messages, as received) running here at once
    /// (default [`DEFAULT_MAX_CALL_BYTES`](crate::limits::DEFAULT_MAX_CALL_BYTES), 64 MiB, the
    /// native call window's default). Twisted cannot be told of it, so a driver stops reading
    /// while it is reached ([`Broker::running_bytes`]). The messages held back meanwhile
    /// (see [`Broker::wants_input`]) are held to it too, as they are kept: as Banana bytes,
    /// decoded again when they run.
    pub max_call_bytes: usize,
    /// Violations (answers nobody asked for, releases of what is not exported, unknown
    /// commands) tolerated before the connection closes (default [`DEFAULT_MAX_VIOLATIONS`]).
    pub max_violations: u32,
    /// How long a connection may take to choose its dialect (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]); the driver closes it then.
    pub handshake_timeout: std::time::Duration,
    /// The most connections a server keeps open at once (default 1 024, as AMP's and the
    /// native server's); one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// The most of those from one source address, an IPv4 address or an IPv6 /64 (default
    /// 64), so that one address cannot take every slot.
    pub max_connections_per_address: usize,
}

impl Default for PbConfig {
    fn default() -> Self {
        PbConfig {
            banana: BananaConfig::default(),
            jelly: JellyConfig::default(),
            max_exports: MAX_BROKER_REFS,
            max_imports: DEFAULT_MAX_IMPORTS,
            max_in_flight_calls: DEFAULT_MAX_IN_FLIGHT_CALLS,
            max_call_bytes: crate::limits::DEFAULT_MAX_CALL_BYTES,
            max_violations: DEFAULT_MAX_VIOLATIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: 1024,
            max_connections_per_address: 64,
        }
    }
}

impl PbConfig {
    /// Sets [`PbConfig::banana`].
    pub fn banana(mut self, banana: BananaConfig) -> Self {
        self.banana = banana;
        self
    }

    /// Sets [`PbConfig::jelly`].
    pub fn jelly(mut self, jelly: JellyConfig) -> Self {
        self.jelly = jelly;
        self
    }

    /// Sets [`PbConfig::max_exports`].
    pub fn max_exports(mut self, n: usize) -> Self {
        self.max_exports = n;
        self
    }

    /// Sets [`PbConfig::max_imports`].
    pub fn max_imports(mut self, n: usize) -> Self {
        self.max_imports = n;
        self
    }

    /// Sets [`PbConfig::max_in_flight_calls`].
    pub fn max_in_flight_calls(mut self, n: usize) -> Self {
        self.max_in_flight_calls = n;
        self
    }

    /// Sets [`PbConfig::max_call_bytes`].
    pub fn max_call_bytes(mut self, bytes: usize) -> Self {
        self.max_call_bytes = bytes;
        self
    }

    /// Sets [`PbConfig::handshake_timeout`].
    pub fn handshake_timeout(mut self, d: std::time::Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Sets [`PbConfig::max_connections`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`PbConfig::max_connections_per_address`].
    pub fn max_connections_per_address(mut self, n: usize) -> Self {
        self.max_connections_per_address = n;
        self
    }

    /// Sets [`PbConfig::max_violations`].
    pub fn max_violations(mut self, n: u32) -> Self {
        self.max_violations = n;
        self
    }
}

/// Which end of the connection we are: the server offers dialects, the client chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection.
    Server,
    /// We dialed.
    Client,
}

/// Why a connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PbError {
    /// The Banana bytes are malformed or over a limit.
    #[error("banana: {0}")]
    Banana(#[from] BananaCodecError),
    /// The dialect handshake failed.
    #[error("dialect handshake: {0}")]
    Dialect(&'static str),
    /// The peer speaks another PB version.
    #[error("the peer speaks PB version {0}, not {PROTOCOL_VERSION}")]
    Version(String),
    /// A message that is not a list headed by a command name.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// Too many violations.
    #[error("too many protocol violations (last: {0})")]
    Violations(String),
}

/// Why a message of ours could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// Over a Banana limit the peer would refuse.
    #[error("banana: {0}")]
    Banana(#[from] BananaCodecError),
    /// Exporting one more object would pass [`PbConfig::max_exports`].
    #[error("more than {0} objects exported to the peer")]
    TooManyExports(usize),
    /// Holding one more of the peer's objects would pass [`PbConfig::max_imports`].
    #[error("more than {0} of the peer's objects held")]
    TooManyImports(usize),
}

/// How a call names its target object: a luid, or a name such as `root`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A luid the object's owner gave it.
    Luid(i64),
    /// A named object (`b"root"`).
    Name(Bytes),
}

/// What an exported luid is: a Referenceable, or a Cacheable whose copy the peer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// Sent as `["remote", luid]`, released with `decref`.
    Reference,
    /// Sent as `[tag, luid, state]` then `["cached", luid]`, released with `decache`.
    Cache,
}

/// A call from the peer, to run here.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming<O> {
    /// The peer's request id; the answer names it.
    pub request: i64,
    /// The object called (a `cachemessage` is an [`Observe`] instead).
    pub object: O,
    /// The method's name (bytes, UTF-8 in practice).
    pub method: Bytes,
    /// Whether the peer wants an answer (`pbanswer=False` sends 0).
    pub answer: bool,
    /// The arguments: the Jelly expression of a tuple.
    pub args: Element,
    /// The keyword arguments: the Jelly expression of a dict.
    pub kwargs: Element,
}

/// A `cachemessage` from the peer: an update to our copy of one of its Cacheables.
#[derive(Debug, Clone, PartialEq)]
pub struct Observe {
    /// The peer's request id; the answer names it.
    pub request: i64,
    /// The peer's luid of the Cacheable.
    pub luid: i64,
    /// The observer method's name (`set` is delivered to `observe_set`).
    pub method: Bytes,
    /// Whether the peer wants an answer.
    pub answer: bool,
    /// The arguments: the Jelly expression of a tuple.
    pub args: Element,
    /// The keyword arguments: the Jelly expression of a dict.
    pub kwargs: Element,
}

/// What a message from the peer asks of the driver.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event<O, W> {
    /// The peer calls one of our objects. Finish it with [`Broker::finish_call`] (if it wants
    /// an answer) or [`Broker::forget_call`].
    Call(Incoming<O>),
    /// The peer updates its Cacheable we hold a copy of.
    Observe(Observe),
    /// The answer to our call `request` arrived (`Ok` the value, `Err` the failure): hand it
    /// to the caller and wake it (`waiter`, `None` if the caller went away or never polled).
    Answer {
        /// Our request id.
        request: i64,
        /// Who waits for it.
        waiter: Option<W>,
        /// The value or the failure.
        result: Result<Element, Element>,
    },
    /// The peer released its last reference to an exported object: it is no longer exported.
    Unexported {
        /// The object.
        object: O,
        /// The luid it had.
        luid: i64,
        /// What it was exported as.
        kind: ExportKind,
    },
    /// The owner of a Cacheable we released (`decache`) confirms it stopped observing us
    /// (`uncache`): our copy of that luid is gone.
    Uncached(i64),
    /// The dialect handshake is complete.
    Ready,
}

struct Export<O> {
    object: O,
    count: u64,
    kind: ExportKind,
    /// A Cacheable's: a message carrying its state has been queued
    /// ([`Broker::note_state_queued`]).
    state_queued: bool,
}

/// One send of a Cacheable ([`Broker::export_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSend {
    /// Its luid.
    pub luid: i64,
    /// Whether this send should carry the state (`[tag, luid, state]`): every send does until
    /// a message carrying it has been queued ([`Broker::note_state_queued`]), so that whichever
    /// message leaves first brings the state, however the messages jellied meanwhile are
    /// ordered or dropped. The driver sends the others as `["cached", luid]`
    /// ([`Broker::state_queued`] says which, as each is queued).
    pub with_state: bool,
    /// Whether this send exported it (the peer observes it from now on).
    pub new: bool,
}

struct Slot<W> {
    waiter: Option<W>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Client: waiting for the server's offer.
    AwaitOffer,
    /// Server: waiting for the client's choice.
    AwaitChoice,
    /// Messages flow.
    Ready,
    /// Closed.
    Closed,
}

/// One PB connection's protocol state (see the module's docs).
pub struct Broker<O, W> {
    role: Role,
    config: PbConfig,
    phase: Phase,
    decoder: BananaCodec,
    encoder: BananaCodec,
    out: BytesMut,
    next_request: i64,
    next_luid: i64,
    exports: HashMap<i64, Export<O>>,
    by_object: HashMap<(O, bool), i64>,
    names: HashMap<Bytes, O>,
    /// Luids of the peer's Cacheables we hold copies of, and of its references: how many
    /// times each was received and not yet released.
    imports: HashMap<i64, u64>,
    pending: HashMap<i64, Slot<W>>,
    /// The peer's calls running here: under each request id, how many messages and their bytes
    /// (a peer may reuse an id while a call runs: each message counts).
    running: HashMap<i64, (usize, usize)>,
    /// How many messages `running` holds.
    running_calls: usize,
    /// The bytes of the messages of `running`.
    running_bytes: usize,
    /// Messages decoded while the peer's calls are at the cap, in order: the driver reads on
    /// at the cap while our own calls wait for answers (a handler waiting for one would
    /// otherwise never end), and everything but those answers waits here until the calls are
    /// below the cap again.
    held: std::collections::VecDeque<Held>,
    /// What `held` holds in memory (held to [`PbConfig::max_call_bytes`]).
    held_bytes: usize,
    /// The bytes of the message being decoded (a message may arrive over several reads).
    message_len: usize,
    violations: u32,
    peer_version: Option<i64>,
}

/// A message held back at the cap (see [`Broker::poll_input`]), as Banana bytes of its own,
/// decoded again when it runs. Kept decoded, it would take about 20 times its bytes (an
/// element is 40 bytes, where an integer is 2 on the wire), and its strings would keep alive
/// the read buffers they were decoded from.
struct Held {
    /// The message, encoded again (about its bytes on the wire, or fewer: the shortest
    /// prefixes, PB's vocabulary for its words).
    banana: Bytes,
    /// Its bytes on the wire: what a call counts while it runs.
    wire_len: usize,
    /// What it is counted for in `held_bytes`.
    charge: usize,
    /// Whether it answers one of our calls (it waits only behind a call it may depend on).
    answer: bool,
}

fn word(w: &'static [u8]) -> Element {
    Element::Bytes(Bytes::from_static(w))
}

impl<O: Clone + Eq + Hash, W> Broker<O, W> {
    /// A broker for one connection. A server queues its dialect offer at once; a client
    /// waits for it.
    pub fn new(role: Role, config: PbConfig) -> Self {
        let mut b = Broker {
            role,
            config,
            phase: match role {
                Role::Server => Phase::AwaitChoice,
                Role::Client => Phase::AwaitOffer,
            },
            decoder: BananaCodec::new(config.banana),
            encoder: BananaCodec::new(config.banana),
            out: BytesMut::new(),
            next_request: 1,
            next_luid: 1,
            exports: HashMap::new(),
            by_object: HashMap::new(),
            names: HashMap::new(),
            imports: HashMap::new(),
            pending: HashMap::new(),
            running: HashMap::new(),
            running_calls: 0,
            running_bytes: 0,
            held: std::collections::VecDeque::new(),
            held_bytes: 0,
            message_len: 0,
            violations: 0,
            peer_version: None,
        };
        if role == Role::Server {
            // The offer goes out in the `none` dialect, which both codecs start in.
            let _ = b.encoder.encode(&Dialect::offer(), &mut b.out);
        }
        b
    }

    /// The limits in force.
    pub fn config(&self) -> &PbConfig {
        &self.config
    }

    /// Our end of the connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the dialect handshake is done.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Whether the connection closed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The version the peer announced, once it did.
    pub fn peer_version(&self) -> Option<i64> {
        self.peer_version
    }

    /// The codec our messages are encoded with (its dialect is the connection's, its limits
    /// the peer's): encode values with it so that what we send is what the peer accepts.
    pub fn encoder(&self) -> &BananaCodec {
        &self.encoder
    }

    /// Takes the bytes queued for the peer.
    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    /// Whether bytes are queued for the peer.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Gives `object` a name the peer can call it by (`b"root"`). Named objects are not
    /// counted or released.
    pub fn set_name(&mut self, name: Bytes, object: O) {
        self.names.insert(name, object);
    }

    /// Removes a name.
    pub fn remove_name(&mut self, name: &[u8]) -> Option<O> {
        self.names.remove(name)
    }

    /// Counts one more send of `object` as a Referenceable and gives its luid: a new luid the
    /// first time, the same one while the peer holds it.
    pub fn export(&mut self, object: O) -> Result<i64, SendError> {
        self.export_as(object, ExportKind::Reference)
            .map(|(luid, _)| luid)
    }

    /// As [`Broker::export`] for a Cacheable: its luid, whether this send should carry its
    /// state, and whether it was exported now (see [`CacheSend`]).
    pub fn export_cache(&mut self, object: O) -> Result<CacheSend, SendError> {
        let (luid, new) = self.export_as(object, ExportKind::Cache)?;
        let with_state = self.exports.get(&luid).is_some_and(|e| !e.state_queued);
        Ok(CacheSend {
            luid,
            with_state,
            new,
        })
    }

    /// Whether a message carrying the state of the Cacheable exported as `luid` has been
    /// queued: then a message about to be queued sends it as `["cached", luid]`.
    pub fn state_queued(&self, luid: i64) -> bool {
        self.exports
            .get(&luid)
            .is_some_and(|e| e.kind == ExportKind::Cache && e.state_queued)
    }

    /// A message carrying the state of the Cacheable exported as `luid` was queued: later
    /// sends go as `["cached", luid]`.
    pub fn note_state_queued(&mut self, luid: i64) {
        if let Some(e) = self.exports.get_mut(&luid)
            && e.kind == ExportKind::Cache
        {
            e.state_queued = true;
        }
    }

    fn export_as(&mut self, object: O, kind: ExportKind) -> Result<(i64, bool), SendError> {
        if self.phase == Phase::Closed {
            return Err(SendError::Closed);
        }
        let key = (object, kind == ExportKind::Cache);
        if let Some(&luid) = self.by_object.get(&key)
            && let Some(e) = self.exports.get_mut(&luid)
        {
            e.count += 1;
            return Ok((luid, false));
        }
        if self.exports.len() >= self.config.max_exports {
            return Err(SendError::TooManyExports(self.config.max_exports));
        }
        let luid = self.next_luid;
        self.next_luid += 1;
        self.by_object.insert(key.clone(), luid);
        self.exports.insert(
            luid,
            Export {
                object: key.0,
                count: 1,
                kind,
                state_queued: false,
            },
        );
        Ok((luid, true))
    }

    /// Takes back one send of export `luid` (a Cacheable's with `cache`) that never reached
    /// the peer: the message that carried it could not be encoded. Counts as a release from
    /// the peer would, and tells the peer nothing. Gives the object and whether that ended
    /// its export (then it is unexported, as [`Event::Unexported`] would say); `None` if it is
    /// not exported as that.
    pub fn unsend(&mut self, luid: i64, cache: bool) -> Option<(O, bool)> {
        match self.exports.get(&luid) {
            Some(e) if (e.kind == ExportKind::Cache) == cache => self.release_export(luid),
            _ => None,
        }
    }

    /// The exported object of a luid.
    pub fn exported(&self, luid: i64) -> Option<&O> {
        self.exports.get(&luid).map(|e| &e.object)
    }

    /// How many distinct objects are exported now (names not counted).
    pub fn export_count(&self) -> usize {
        self.exports.len()
    }

    /// Counts one more receipt of the peer's luid (a `["remote", luid]` or a Cacheable),
    /// which we owe one `decref` (or `decache`) for.
    pub fn note_import(&mut self, luid: i64) -> Result<(), SendError> {
        if let Some(n) = self.imports.get_mut(&luid) {
            *n += 1;
            return Ok(());
        }
        if self.imports.len() >= self.config.max_imports {
            return Err(SendError::TooManyImports(self.config.max_imports));
        }
        self.imports.insert(luid, 1);
        Ok(())
    }

    /// How many distinct objects of the peer's we hold.
    pub fn import_count(&self) -> usize {
        self.imports.len()
    }

    /// Releases `count` receipts of the peer's luid: queues as many `decref`s (or `decache`s
    /// for a Cacheable copy), no more than were received.
    pub fn release(&mut self, luid: i64, count: u64, cache: bool) {
        if self.phase == Phase::Closed {
            return;
        }
        let Some(held) = self.imports.get_mut(&luid) else {
            return;
        };
        let n = count.min(*held);
        *held -= n;
        if *held == 0 {
            self.imports.remove(&luid);
        }
        let command: &'static [u8] = if cache { b"decache" } else { b"decref" };
        for _ in 0..n {
            self.queue(&Element::List(vec![word(command), Element::Int(luid)]));
        }
    }

    /// Releases one receipt of the peer's luid that is not kept (the value that carried it was
    /// refused, or it was over `max_imports`): queues one `decref` (or `decache` for a
    /// Cacheable), counting nothing, so the peer's count of its sends stays right.
    pub fn refuse(&mut self, luid: i64, cache: bool) {
        if self.phase == Phase::Closed {
            return;
        }
        let command: &'static [u8] = if cache { b"decache" } else { b"decref" };
        self.queue(&Element::List(vec![word(command), Element::Int(luid)]));
    }

    /// Starts our call of `method` on the peer's `target`, with `args` the Banana bytes of a
    /// Jelly tuple (encoded with [`Broker::encoder`]) and no keyword arguments. With
    /// `answer`, the call waits for its answer ([`Event::Answer`], which gives `waiter` back);
    /// without, nothing comes back. Returns the request id. A message the peer's decoder
    /// would refuse (held to [`Broker::encoder`]'s limits as a whole: depth, sizes, expression
    /// budget) is not queued, and nothing waits for it.
    pub fn start_call(
        &mut self,
        target: &Target,
        method: &[u8],
        args: &[u8],
        answer: Option<W>,
        observe: bool,
    ) -> Result<i64, SendError> {
        if self.phase == Phase::Closed {
            return Err(SendError::Closed);
        }
        if method.len() > self.config.banana.size_limit {
            return Err(SendError::Banana(BananaCodecError::StringTooLong {
                len: method.len(),
                limit: self.config.banana.size_limit,
            }));
        }
        let id = self.next_request;
        self.next_request += 1;
        let head: &'static [u8] = if observe { b"cachemessage" } else { b"message" };
        let target = match target {
            Target::Luid(l) => Element::Int(*l),
            Target::Name(n) => Element::Bytes(n.clone()),
        };
        let start = self.out.len();
        let result = (|| {
            self.encoder.encode_list_header(7, &mut self.out)?;
            for e in [
                word(head),
                Element::Int(id),
                target,
                Element::Bytes(Bytes::copy_from_slice(method)),
                Element::Int(i64::from(answer.is_some())),
            ] {
                self.encoder.encode(&e, &mut self.out)?;
            }
            self.out.extend_from_slice(args);
            self.encoder
                .encode(&Element::List(vec![word(b"dictionary")]), &mut self.out)?;
            // The peer's decoder holds the whole message to its limits.
            self.encoder.check_expressions(&self.out[start..])
        })();
        if let Err(e) = result {
            self.out.truncate(start);
            return Err(e.into());
        }
        if let Some(w) = answer {
            self.pending.insert(id, Slot { waiter: Some(w) });
        }
        Ok(id)
    }

    /// While our call `id` waits for its answer, makes `waiter` the one its answer gives
    /// back, and says `true`; `false` for an id that waits for nothing (answered, or never
    /// made).
    pub fn set_waiter(&mut self, id: i64, waiter: W) -> bool {
        match self.pending.get_mut(&id) {
            Some(slot) => {
                slot.waiter = Some(waiter);
                true
            }
            None => false,
        }
    }

    /// Whether our call `id` still waits for its answer.
    pub fn is_pending(&self, id: i64) -> bool {
        self.pending.contains_key(&id)
    }

    /// The caller of `id` went away: its answer, when it comes, gives no waiter back (PB
    /// cannot cancel a call; the driver still releases the references in the answer).
    pub fn abandon(&mut self, id: i64) {
        if let Some(slot) = self.pending.get_mut(&id) {
            slot.waiter = None;
        }
    }

    /// How many of our calls wait for answers.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// How many of the peer's calls run here (with or without an answer). A driver should
    /// stop reading while this is at [`PbConfig::max_in_flight_calls`].
    pub fn running_count(&self) -> usize {
        self.running_calls
    }

    /// The bytes of the messages of the peer's calls running here. A driver should stop
    /// reading while this is at [`PbConfig::max_call_bytes`] or more.
    pub fn running_bytes(&self) -> usize {
        self.running_bytes
    }

    /// Whether the peer's calls running here are at [`PbConfig::max_in_flight_calls`] or hold
    /// [`PbConfig::max_call_bytes`].
    pub fn calls_at_cap(&self) -> bool {
        self.running_calls >= self.config.max_in_flight_calls
            || self.running_bytes >= self.config.max_call_bytes
    }

    /// Whether a driver should read from the peer (and then [`Broker::poll_input`]): below the
    /// cap on the peer's calls, or at it while our own calls wait for answers, until what is
    /// held back reaches [`HELD_PER_CALL`] messages for each call the cap allows or
    /// [`PbConfig::max_call_bytes`]. A driver that stops reading waits for a call to end
    /// ([`Broker::finish_call`], [`Broker::forget_call`]) or one of ours to start, then polls
    /// the input again: what was held back runs first.
    pub fn wants_input(&self) -> bool {
        !self.calls_at_cap() || self.reads_on_at_cap()
    }

    /// At the cap, whether to decode on (holding back all but answers): our calls wait for
    /// answers, and what is held back is within the cap's own count and bytes.
    fn reads_on_at_cap(&self) -> bool {
        !self.pending.is_empty()
            && self.held.len()
                < self
                    .config
                    .max_in_flight_calls
                    .saturating_mul(HELD_PER_CALL)
            && self.held_bytes < self.config.max_call_bytes
    }

    /// The messages held back at the cap.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Whether `e` names a Cacheable copy (`["cached", luid]`) that we have not received.
    fn names_unknown_copy(&self, e: &Element) -> bool {
        flavor_luids(e, b"cached")
            .iter()
            .any(|luid| !self.imports.contains_key(luid))
    }

    /// The peer's call `request` is over: it no longer counts (one message of the id's, its
    /// share of their bytes; the last one takes what is left).
    fn end_call(&mut self, request: i64) {
        let Some((calls, bytes)) = self.running.get_mut(&request) else {
            return;
        };
        let share = *bytes / *calls;
        *calls -= 1;
        *bytes -= share;
        self.running_calls -= 1;
        self.running_bytes -= share;
        if *calls == 0 {
            self.running.remove(&request);
        }
    }

    /// Answers the peer's call `request`: `Ok` with the Banana bytes of the result's Jelly
    /// expression, `Err` with those of the failure. An encoding over the peer's limits is not
    /// sent: the caller gets `Err` back and should answer with a smaller failure.
    pub fn finish_call(
        &mut self,
        request: i64,
        result: Result<&[u8], &[u8]>,
    ) -> Result<(), SendError> {
        if self.phase == Phase::Closed {
            self.end_call(request);
            return Err(SendError::Closed);
        }
        self.queue_answer(request, result)?;
        self.end_call(request);
        Ok(())
    }

    /// Queues the answer to the peer's call `request` (see [`Broker::finish_call`]) without
    /// ending a call: a refused call never ran, and a call of the peer's that runs under the
    /// same request id keeps counting.
    fn queue_answer(
        &mut self,
        request: i64,
        result: Result<&[u8], &[u8]>,
    ) -> Result<(), SendError> {
        let (head, body): (&'static [u8], &[u8]) = match result {
            Ok(b) => (b"answer", b),
            Err(b) => (b"error", b),
        };
        let start = self.out.len();
        let r = (|| {
            self.encoder.encode_list_header(3, &mut self.out)?;
            self.encoder.encode(&word(head), &mut self.out)?;
            self.encoder.encode(&Element::Int(request), &mut self.out)?;
            self.out.extend_from_slice(body);
            // The peer's decoder holds the whole message to its limits.
            self.encoder.check_expressions(&self.out[start..])
        })();
        if let Err(e) = r {
            self.out.truncate(start);
            return Err(e.into());
        }
        Ok(())
    }

    /// The peer's call `request` ended without an answer (it wanted none).
    pub fn forget_call(&mut self, request: i64) {
        self.end_call(request);
    }

    /// Closes the connection: every waiting caller is given back to be woken (their calls
    /// fail), and the export table is emptied (each object given back once).
    pub fn close(&mut self) -> (Vec<W>, Vec<O>) {
        self.phase = Phase::Closed;
        let waiters = self.pending.drain().filter_map(|(_, s)| s.waiter).collect();
        let objects = self.exports.drain().map(|(_, e)| e.object).collect();
        self.by_object.clear();
        self.running.clear();
        self.running_calls = 0;
        self.running_bytes = 0;
        self.held.clear();
        self.held_bytes = 0;
        self.imports.clear();
        (waiters, objects)
    }

    /// Decodes what the peer sent, from the front of `src`; `Ok(None)` when `src` holds no
    /// complete message more. An error means the connection must close.
    pub fn poll_input(&mut self, src: &mut BytesMut) -> Result<Option<Event<O, W>>, PbError> {
        loop {
            if self.phase == Phase::Closed {
                return Ok(None);
            }
            // What was held back at the cap runs first, in order, once below it; an answer at
            // the front (held behind a call it depended on, which has run) goes even at the cap.
            if self
                .held
                .front()
                .is_some_and(|held| !self.calls_at_cap() || held.answer)
            {
                if let Some(held) = self.held.pop_front() {
                    self.held_bytes -= held.charge;
                    let e = crate::banana::decode_complete(
                        &held.banana,
                        self.config.banana,
                        self.decoder.dialect(),
                    )?;
                    self.message_len = held.wire_len;
                    let handled = self.handle(e);
                    self.message_len = 0;
                    if let Some(ev) = handled? {
                        return Ok(Some(ev));
                    }
                }
                continue;
            }
            if self.calls_at_cap() && !self.reads_on_at_cap() {
                return Ok(None);
            }
            let before = src.len();
            let decoded = self.decoder.decode(src);
            self.message_len += before - src.len();
            let Some(e) = decoded? else {
                return Ok(None);
            };
            // At the cap, only the answers to our calls go through: they may be what a running
            // call waits for. Everything else keeps its place behind what is held, and so does
            // an answer that names a Cacheable copy we do not hold yet (`["cached", luid]`: its
            // first send may be in a held call).
            if self.phase == Phase::Ready
                && (self.calls_at_cap() || !self.held.is_empty())
                && (!is_answer(&e) || self.names_unknown_copy(&e))
            {
                self.hold(&e)?;
                continue;
            }
            // A call counts its message's bytes while it runs (`running_bytes`).
            let handled = self.handle(e);
            self.message_len = 0;
            if let Some(ev) = handled? {
                return Ok(Some(ev));
            }
        }
    }

    /// Holds message `e` back, just decoded from `message_len` bytes, as Banana bytes of its
    /// own (see [`Held`]), counted by what they take in memory.
    fn hold(&mut self, e: &Element) -> Result<(), PbError> {
        let wire_len = std::mem::take(&mut self.message_len);
        let mut banana = BytesMut::with_capacity(wire_len);
        // Within the limits it was just decoded under, which the encoder shares: an error
        // here would be a defect, and closes the connection rather than losing the message.
        self.encoder.encode(e, &mut banana)?;
        // Only the bytes it needs: the buffer grows by doubling past an estimate that fell
        // short.
        let banana = match banana.capacity() > banana.len() + banana.len() / 8 {
            true => Bytes::copy_from_slice(&banana),
            false => banana.freeze(),
        };
        let charge = std::mem::size_of::<Held>() + banana.len();
        self.held_bytes += charge;
        self.held.push_back(Held {
            answer: is_answer(e),
            banana,
            wire_len,
            charge,
        });
        Ok(())
    }

    fn set_dialect(&mut self, d: Dialect) {
        self.decoder.set_dialect(d);
        self.encoder.set_dialect(d);
        self.phase = Phase::Ready;
        self.queue(&Element::List(vec![
            word(b"version"),
            Element::Int(PROTOCOL_VERSION),
        ]));
    }

    fn queue(&mut self, e: &Element) {
        // Our own messages are small and well-formed; one that fails to encode is dropped
        // whole (the encoder appends nothing then).
        let _ = self.encoder.encode(e, &mut self.out);
    }

    fn violation(&mut self, what: String) -> Result<Option<Event<O, W>>, PbError> {
        // Saturating: with `max_violations = u32::MAX` the connection is never closed for them.
        self.violations = self.violations.saturating_add(1);
        if self.violations > self.config.max_violations {
            self.phase = Phase::Closed;
            return Err(PbError::Violations(what));
        }
        Ok(None)
    }

    fn handle(&mut self, e: Element) -> Result<Option<Event<O, W>>, PbError> {
        match self.phase {
            Phase::AwaitOffer => {
                let d = Dialect::choose(&e)
                    .ok_or(PbError::Dialect("no dialect offered that we know"))?;
                let _ = self
                    .encoder
                    .encode(&Element::Bytes(Bytes::from_static(d.name())), &mut self.out);
                self.set_dialect(d);
                return Ok(Some(Event::Ready));
            }
            Phase::AwaitChoice => {
                let d = Dialect::chosen(&e)
                    .ok_or(PbError::Dialect("the client chose no dialect we offered"))?;
                self.set_dialect(d);
                return Ok(Some(Event::Ready));
            }
            Phase::Closed => return Ok(None),
            Phase::Ready => {}
        }
        let Element::List(mut items) = e else {
            return Err(PbError::Malformed("a message is not a list"));
        };
        if items.is_empty() {
            return Err(PbError::Malformed("an empty message"));
        }
        let Element::Bytes(command) = items.remove(0) else {
            return Err(PbError::Malformed("a message's command is not a string"));
        };
        match &command[..] {
            b"version" => {
                let v = items.first().and_then(Element::as_i64);
                if items.len() != 1 || v != Some(PROTOCOL_VERSION) {
                    return Err(PbError::Version(format!("{:?}", items.first())));
                }
                self.peer_version = v;
                Ok(None)
            }
            b"message" | b"cachemessage" => {
                self.handle_call(&command[..] == b"cachemessage", items)
            }
            b"answer" | b"error" => {
                let ok = &command[..] == b"answer";
                let [id, value]: [Element; 2] = items
                    .try_into()
                    .map_err(|_| PbError::Malformed("an answer needs an id and a value"))?;
                let Some(id) = id.as_i64() else {
                    return Err(PbError::Malformed("an answer's id is not an integer"));
                };
                let Some(slot) = self.pending.remove(&id) else {
                    return self.violation(format!("an answer to request {id}, which is not ours"));
                };
                Ok(Some(Event::Answer {
                    request: id,
                    waiter: slot.waiter,
                    result: if ok { Ok(value) } else { Err(value) },
                }))
            }
            b"decref" | b"decache" => {
                let cache = &command[..] == b"decache";
                let Some(luid) = items
                    .first()
                    .and_then(Element::as_i64)
                    .filter(|_| items.len() == 1)
                else {
                    return Err(PbError::Malformed("a release needs one integer luid"));
                };
                match self.exports.get(&luid) {
                    Some(e) if (e.kind == ExportKind::Cache) == cache => {}
                    _ => {
                        return self.violation(format!(
                            "a release of luid {luid}, which is not exported as that"
                        ));
                    }
                }
                match self.release_export(luid) {
                    Some((object, true)) => {
                        let kind = if cache {
                            ExportKind::Cache
                        } else {
                            ExportKind::Reference
                        };
                        if cache {
                            self.queue(&Element::List(vec![word(b"uncache"), Element::Int(luid)]));
                        }
                        Ok(Some(Event::Unexported { object, luid, kind }))
                    }
                    _ => Ok(None),
                }
            }
            b"uncache" => {
                let Some(luid) = items.first().and_then(Element::as_i64) else {
                    return Err(PbError::Malformed("uncache needs an integer luid"));
                };
                Ok(Some(Event::Uncached(luid)))
            }
            b"didNotUnderstand" => Ok(None),
            _ => {
                self.queue(&Element::List(vec![
                    word(b"didNotUnderstand"),
                    Element::Bytes(command.clone()),
                ]));
                self.violation(format!(
                    "unknown command {:?}",
                    String::from_utf8_lossy(&command)
                ))
            }
        }
    }

    /// Takes one count off export `luid`; gives back the object and whether that ended it.
    fn release_export(&mut self, luid: i64) -> Option<(O, bool)> {
        let e = self.exports.get_mut(&luid)?;
        e.count = e.count.saturating_sub(1);
        if e.count > 0 {
            return Some((e.object.clone(), false));
        }
        let e = self.exports.remove(&luid)?;
        self.by_object
            .remove(&(e.object.clone(), e.kind == ExportKind::Cache));
        Some((e.object, true))
    }

    fn handle_call(
        &mut self,
        observe: bool,
        items: Vec<Element>,
    ) -> Result<Option<Event<O, W>>, PbError> {
        let [request, object, method, answer, args, kwargs]: [Element; 6] = items
            .try_into()
            .map_err(|_| PbError::Malformed("a message needs six fields"))?;
        let Some(request) = request.as_i64() else {
            return Err(PbError::Malformed(
                "a message's request id is not an integer",
            ));
        };
        let method = match method {
            Element::Bytes(b) => b,
            // A str method name from a peer that sends `["unicode", name]`.
            Element::List(l)
                if l.len() == 2 && l[0].as_bytes().is_some_and(|t| &t[..] == b"unicode") =>
            {
                match &l[1] {
                    Element::Bytes(b) => b.clone(),
                    _ => {
                        return Err(PbError::Malformed(
                            "a message's method name is not a string",
                        ));
                    }
                }
            }
            _ => {
                return Err(PbError::Malformed(
                    "a message's method name is not a string",
                ));
            }
        };
        let answer = match answer.as_i64() {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(PbError::Malformed("answerRequired is not 0 or 1")),
        };
        if observe {
            let Some(luid) = object.as_i64() else {
                return Err(PbError::Malformed("a cachemessage names no luid"));
            };
            return Ok(Some(Event::Observe(Observe {
                request,
                luid,
                method,
                answer,
                args,
                kwargs,
            })));
        }
        let target = match &object {
            Element::Int(luid) => self
                .exports
                .get(luid)
                .filter(|e| e.kind == ExportKind::Reference)
                .map(|e| e.object.clone()),
            Element::Bytes(name) => self.names.get(name).cloned(),
            _ => None,
        };
        let Some(target) = target else {
            if answer {
                let failure = error_failure(
                    &self.encoder,
                    b"twisted.spread.pb.Error",
                    "Invalid Object ID",
                    &[
                        b"twisted.spread.pb.Error",
                        b"builtins.Exception",
                        b"builtins.BaseException",
                        b"builtins.object",
                    ],
                );
                if let Ok(f) = failure {
                    let _ = self.queue_answer(request, Err(&f));
                }
            }
            return Ok(None);
        };
        // A call over the cap is held back (see `poll_input`); this guards the table whatever
        // the driver does.
        if self.running_calls >= self.config.max_in_flight_calls {
            if answer {
                let failure = error_failure(
                    &self.encoder,
                    b"twisted.spread.pb.Error",
                    "too many calls in flight",
                    &[
                        b"twisted.spread.pb.Error",
                        b"builtins.Exception",
                        b"builtins.BaseException",
                        b"builtins.object",
                    ],
                );
                if let Ok(f) = failure {
                    let _ = self.queue_answer(request, Err(&f));
                }
            }
            return self.violation(format!(
                "a call without answer over the cap of {} in flight",
                self.config.max_in_flight_calls
            ));
        }
        // Calls without an answer run too, and count as long as they do; so does each message
        // of a request id a peer reuses while its call runs.
        let (calls, bytes) = self.running.entry(request).or_default();
        *calls += 1;
        *bytes += self.message_len;
        self.running_calls += 1;
        self.running_bytes += self.message_len;
        Ok(Some(Event::Call(Incoming {
            request,
            object: target,
            method,
            answer,
            args,
            kwargs,
        })))
    }
}

/// Calls `f(kind, luid)` for each object flavor in the raw expression `e` (a message before
/// it is unjellied): `kind` is `remote`, `local`, `cached` or `lcache` for `[kind, luid]`, and
/// `cache` for a Cacheable's first send, `[tag, luid, state]`. The expression is walked as
/// Jelly reads it: a dictionary's entries as the `[key, value]` pairs they are (a key or value
/// that only looks like a flavor's head is none), a `reference`'s number skipped.
fn each_flavor(e: &Element, mut f: impl FnMut(&[u8], i64)) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        let Element::List(items) = e else { continue };
        let Some((Element::Bytes(tag), rest)) = items.split_first() else {
            continue;
        };
        match (&tag[..], rest) {
            (b"dictionary", entries) => {
                for entry in entries {
                    if let Element::List(pair) = entry {
                        stack.extend(pair);
                    }
                }
            }
            (b"remote" | b"local" | b"cached" | b"lcache", [luid]) => {
                if let Some(luid) = luid.as_i64() {
                    f(tag, luid);
                }
            }
            (b"reference", [_, body]) => stack.push(body),
            (t, [Element::Int(luid), state]) if !crate::jelly::is_builtin_tag(t) => {
                f(b"cache", *luid);
                stack.push(state);
            }
            (_, rest) => stack.extend(rest),
        }
    }
}

/// The luids of the flavors `[flavor, luid]` (`remote`, `cached`, ...) in the raw expression
/// `e`, as a message holds them before it is unjellied.
pub fn flavor_luids(e: &Element, flavor: &[u8]) -> Vec<i64> {
    let mut luids = Vec::new();
    each_flavor(e, |kind, luid| {
        if kind == flavor {
            luids.push(luid);
        }
    });
    luids
}

/// The peer's objects the raw expression `e` carries, each as `(luid, cache)`: a Referenceable
/// (`["remote", luid]`) or a Cacheable (`[tag, luid, state]`, `["cached", luid]`). What a
/// message that does not unjelly must still release ([`Broker::refuse`]).
pub fn sent_objects(e: &Element) -> Vec<(i64, bool)> {
    let mut sent = Vec::new();
    each_flavor(e, |kind, luid| match kind {
        b"remote" => sent.push((luid, false)),
        b"cached" | b"cache" => sent.push((luid, true)),
        _ => {}
    });
    sent
}

/// Whether `e` is an answer or error message to one of our calls.
fn is_answer(e: &Element) -> bool {
    matches!(e, Element::List(items)
        if items.first().and_then(Element::as_bytes).is_some_and(|c| &c[..] == b"answer" || &c[..] == b"error"))
}

/// The Banana bytes of a Twisted `CopyableFailure` with this type name, message and parents
/// and no traceback (as [`crate::jelly::copyable_failure`] makes it): what an `error` answer
/// carries.
pub fn error_failure(
    codec: &BananaCodec,
    type_name: &[u8],
    message: &str,
    parents: &[&[u8]],
) -> Result<Bytes, JellyError> {
    let text = |s: &[u8]| Value::Str(String::from_utf8_lossy(s).into_owned());
    let failure = crate::jelly::copyable_failure(
        Value::Bytes(Bytes::copy_from_slice(type_name)),
        Value::Str(message.to_owned()),
        Value::Str("Traceback unavailable\n".to_owned()),
        Value::List(parents.iter().map(|p| text(p)).collect()),
    );
    let mut out = BytesMut::new();
    crate::jelly::encode(
        &Graph::new(failure),
        &JellyConfig::default(),
        codec,
        &mut out,
    )?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests;
