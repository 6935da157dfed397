//! The broker: one native connection's protocol state, as a state machine with no I/O.
//!
//! It owns a connection's tables (objects exported to the peer, references imported from it,
//! our calls awaiting answers, the peer's calls running here), the request ids of our
//! direction, every limit of ours and of the peer's, and the bytes queued for the peer. It
//! holds no live user object: what it keeps of the driver's (the objects it exports, the
//! handles of imported references, what wakes a caller, what tells a handler it was
//! cancelled) are tokens of the types the driver names through [`Tokens`], and it never calls
//! into them.
//!
//! Input comes in as plain data: [`Broker::handle_frame`] (a frame body from the peer),
//! [`Broker::start_call`], [`Broker::finish_call`], [`Broker::cancel_call`],
//! [`Broker::release_imported`], [`Broker::send_update`], [`Broker::revoke_export`],
//! [`Broker::send_ping`], [`Broker::close`]. Output comes out through
//! [`Broker::poll_transmit`] (the bytes to write, in order) and [`Broker::poll_events`]
//! (what the driver must do once it lets go of the broker: wake a caller, run an object's
//! export hooks, mark a reference dead, hand a cache update to its replica, drop what was
//! released). An incoming call to run comes back from `handle_frame` directly (a frame holds
//! at most one). Time comes in from outside too: keep-alive is [`crate::liveness`], driven by
//! the driver's `now`, and a call's deadline travels as milliseconds the driver reads.
//!
//! ```text
//! connection:  Open ──goodbye sent──▶ Draining ──running and held calls done──▶ Closed
//!                 └──────────────────── error / EOF / abort ──────────────────────▲
//! outgoing call: start_call ─▶ pending ─answer│fault─▶ answered ─poll_answer─▶ delivered
//!                                     └─cancel_call─▶ forgotten (Cancel sent)
//! incoming call: Call ─▶ running (returned) ─finish_call─▶ Answer│Fault sent
//!                              └─Cancel from peer─▶ Event::Cancelled ─finish_call─▶ a Cancelled
//!                                                   fault sent to a peer that keeps a call window
//! export:  sent ─▶ Exported(id) ─sent again─▶ Resent(id) … ─released to 0─▶ Unexported(id)
//!                                  └─revoke_export─▶ Revoked sent, Dropped
//! import:  received ─▶ slot(id, generation) ─last handle dropped─▶ Release(id, count) sent
//!                                  └─Revoked from peer─▶ Event::Revoked, no release
//! ```
//!
//! Reference counting: every time we send a reference to one of our objects its export count
//! goes up by one; the peer counts how many times it received it and, when its last handle is
//! dropped, sends that count back in a release. The object is freed when its count reaches zero,
//! so a release that crosses a new send of the same object never frees an object the peer holds.
//!
//! # Example
//! A broker with a root object answers the peer's call to it:
//! ```
//! # mod pb { pub use pb_proto as proto; }
//! use bytes::{Bytes, BytesMut};
//! use pb::proto::broker::{Broker, Outcome, Sending, Tokens};
//! use pb::proto::frame::FrameDecoder;
//! use pb::proto::limits::Limits;
//! use pb::proto::message::{CallExtras, Message, encode_call_frame_head};
//!
//! /// Objects are plain numbers here; a driver uses its own handles.
//! enum Demo {}
//! impl Tokens for Demo {
//!     type Object = u32;
//!     type Import = u64;
//!     type Waiter = ();
//!     type Watch = ();
//!     fn classify(object: &u32, _conn: u64) -> Sending {
//!         Sending::Exported(*object as usize)
//!     }
//!     fn receive_again(_import: &u64) -> Option<u32> {
//!         None
//!     }
//!     fn now() -> std::time::Instant {
//!         std::time::Instant::now()
//!     }
//! }
//!
//! let mut server = Broker::<Demo>::new(Limits::default(), 1, Some(7));
//! // The peer calls `ping` on our root (object 0), with request id 1.
//! let mut frame = BytesMut::new();
//! let flags = (true, None, &CallExtras::default());
//! encode_call_frame_head(&mut frame, 2, 1, 0, b"ping", flags, &[]);
//! frame.extend_from_slice(b"hi");
//! let body = FrameDecoder::new(1 << 20).decode(&mut frame).unwrap().unwrap();
//! let call = server
//!     .handle_frame(body, &mut |_, _| unreachable!("no references"))
//!     .unwrap()
//!     .unwrap();
//! assert_eq!((call.object, &call.body[call.method.clone()]), (7, &b"ping"[..]));
//! // The handler answers; the answer is queued for the peer.
//! let outcome = Outcome { ok: true, payload: Bytes::from_static(b"ho"), refs: Vec::new() };
//! server.finish_call(call.id, true, Some(Ok(outcome)), (false, call.charge));
//! let (mut out, mut tail) = (Vec::new(), BytesMut::new());
//! server.poll_transmit(&mut out, &mut tail);
//! let mut wire: BytesMut = out.concat().as_slice().into();
//! wire.extend_from_slice(&tail);
//! let answer = FrameDecoder::new(1 << 20).decode(&mut wire).unwrap().unwrap();
//! let limits = Limits::default().message;
//! assert!(matches!(
//!     Message::decode(answer, &limits).unwrap(),
//!     Message::Answer { id: 1, ok: true, .. }
//! ));
//! ```
//!
//! # Layout
//! This file holds the types, the limits and the connection's life (`new`, limits, draining,
//! `close`); the parts: `calls` (ours and the peer's), `input` (the peer's frames), `refs`
//! (references in messages), `output` (what is queued, within the peer's limits).

use std::ops::Range;
use std::task::Poll;

use bytes::{Bytes, BytesMut};

use crate::calls::{Pending, Polled, Running};
use crate::exports::{Exports, Released, Sent};
use crate::frame::{self, Frame, FrameError};
use crate::handshake::ReceiveLimits;
use crate::hash::PeerKeys;
use crate::imports::{Imports, Release};
use crate::limits::{Limits, ProtocolError, TableStats};
use crate::message::{
    self, CallExtras, CallHead, FaultKind, Message, RefDesc, encode_answer_frame_head,
    encode_answer_head, encode_call_frame_head, encode_update_head,
};
use crate::outbox::Outbox;

mod calls;
mod input;
mod output;
mod refs;
#[cfg(test)]
mod tests;

pub use self::input::MakeImport;
use self::output::{CALLER, PEER};

/// The most bytes a call's envelope takes besides its method name and references: tag and
/// flags, then id, target and deadline (a varint of at most 10 bytes each), a signature (8) and
/// a trace context (25), the method name's length (2 for the longest name) and the reference
/// count (10). Messages are checked against
/// the peer's `max_frame_len` with their envelope's largest size, so none that passes can be
/// refused by the peer.
const CALL_HEAD_MAX: usize = 2 + 3 * 10 + 8 + 25 + 2 + 10;

/// The most bytes an answer's envelope takes besides its references: tag, id (10), outcome and
/// reference count (10).
const ANSWER_HEAD_MAX: usize = 1 + 10 + 1 + 10;

/// The most bytes one reference descriptor takes: its kind and a varint id.
const REF_DESC_MAX: usize = 1 + 10;

/// The most bytes one release entry takes: two varints.
const RELEASE_ENTRY_MAX: usize = 2 * 10;

/// The most bytes an update's envelope takes besides its payload: tag and object id.
const UPDATE_HEAD_MAX: usize = 1 + 10;

/// The most entries a release list keeps room for between batches (16 KiB or 24 KiB).
const KEEP_RELEASES: usize = 1024;

/// The types of the driver's tokens that a [`Broker`] holds, and the two questions it asks of
/// them. The broker never calls into a token otherwise: it keeps them, and hands them back in
/// [`Event`]s and [`Incoming`] calls.
pub trait Tokens {
    /// One of our objects, as the driver holds it: kept in the export table while the peer
    /// holds it, handed back in events, and what an incoming call targets. Also what a
    /// reference received from the peer becomes (see [`Broker::handle_frame`]).
    type Object: Clone;
    /// What the import table keeps for a reference received from the peer (a weak handle,
    /// typically: the table must not keep the reference alive).
    type Import: Clone;
    /// What a caller waiting for an answer leaves, to be woken with.
    type Waiter;
    /// What tells the handler of one of the peer's calls that it was cancelled (handed back
    /// in [`Event::Cancelled`], or dropped when the connection closes).
    type Watch;

    /// How `object` is sent on connection `conn`.
    fn classify(object: &Self::Object, conn: u64) -> Sending;

    /// The peer sent again an object the import table holds `import` for: a new reference to
    /// it, counting the receipt, if the handle is still alive (`None` makes a new one).
    fn receive_again(import: &Self::Import) -> Option<Self::Object>;

    /// The driver's clock (the broker reads none of its own), read only for a call with a
    /// deadline that waited parked: it leaves with the time its caller has left then.
    fn now() -> std::time::Instant;
}

/// How an object is sent to the peer (see [`Tokens::classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// A reference to the peer's own object on this connection: it goes back by the id the
    /// peer exported it under.
    Returned(u64),
    /// One of ours, or a forward of another peer's object: exported under a key that names it
    /// (the same object always has the same key while it lives).
    Exported(usize),
}

/// A call failure raised by the system rather than by the callee's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What went wrong.
    pub kind: FaultKind,
    /// Why, for humans.
    pub message: String,
}

impl Fault {
    /// The fault of a call that was pending when the connection was lost.
    pub fn disconnected() -> Fault {
        Fault {
            kind: FaultKind::Disconnected,
            message: "disconnected".into(),
        }
    }

    fn limit(message: String) -> Fault {
        Fault {
            kind: FaultKind::LimitExceeded,
            message,
        }
    }
}

/// An encoded outcome of a call: the callee's `Ok` or typed `Err`. An answer received is in
/// one buffer (`P` = `Bytes`, a slice of its frame); an answer sent may be any [`Payload`].
#[derive(Debug, Clone)]
pub struct Outcome<R, P = Bytes> {
    /// `true` for `Ok`.
    pub ok: bool,
    /// The encoded value.
    pub payload: P,
    /// References the payload points into.
    pub refs: Vec<R>,
}

/// The answer to a call: an outcome, or a fault.
pub type Reply<R, P = Bytes> = Result<Outcome<R, P>, Fault>;

/// A payload as it arrived: a slice of its frame, and the frame's tail if the frame came split
/// (the payload's last byte string, which `bytes` then ends with
/// [`TAIL_MARKER`](crate::frame::TAIL_MARKER) in place of: see [`frame`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Arrived {
    /// The payload's bytes, from its frame.
    pub bytes: Bytes,
    /// Its tail (boxed: most payloads have none, and every answer carries the field).
    pub tail: Option<Box<Bytes>>,
}

impl Arrived {
    /// The payload's length as it would be unsplit.
    pub fn len(&self) -> usize {
        match &self.tail {
            None => self.bytes.len(),
            Some(t) => {
                self.bytes.len() - frame::TAIL_MARKER.len()
                    + frame::string_len_size(t.len())
                    + t.len()
            }
        }
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload in one buffer: its own bytes when it came whole, or else its bytes and its
    /// tail put together (a copy).
    pub fn to_bytes(&self) -> Bytes {
        match &self.tail {
            None => self.bytes.clone(),
            Some(t) => frame::join_tail(&self.bytes, t),
        }
    }

    /// As [`Arrived::to_bytes`], taking the payload's own bytes when it came whole.
    pub fn into_bytes(self) -> Bytes {
        match self.tail {
            None => self.bytes,
            Some(t) => frame::join_tail(&self.bytes, &t),
        }
    }
}

impl From<Bytes> for Arrived {
    fn from(bytes: Bytes) -> Arrived {
        Arrived { bytes, tail: None }
    }
}

/// An encoded value we send (the arguments of a call, or an answer), as the broker queues it:
/// in one buffer, or in pieces (an encoder that shares large byte strings instead of copying
/// them hands out the bytes before, each string, and the bytes after).
pub trait Payload {
    /// The length in bytes.
    fn len(&self) -> usize;
    /// Whether the payload has no bytes.
    #[inline]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Split off the payload's last byte string, for a split frame (see
    /// [`frame`]): only if it ends the payload and has at least
    /// [`MIN_TAIL`](crate::frame::MIN_TAIL) bytes. Returns its bytes; the payload's own then
    /// end with [`TAIL_MARKER`](crate::frame::TAIL_MARKER) in place of its length prefix. A
    /// payload that cannot tell where its byte strings are splits nothing (the default).
    #[inline]
    fn take_tail(&mut self) -> Option<Bytes> {
        None
    }
    /// Queue the bytes in `out`, after the frame's head already there: pieces under
    /// [`ZERO_COPY_MIN`](crate::outbox::ZERO_COPY_MIN) bytes are copied into its buffer, larger ones queued uncopied
    /// ([`Outbox::append_payload`]).
    fn queue(self, out: &mut Outbox);
}

impl Payload for Bytes {
    #[inline]
    fn len(&self) -> usize {
        Bytes::len(self)
    }

    #[inline]
    fn queue(self, out: &mut Outbox) {
        out.append_payload(self);
    }
}

/// One of the peer's calls, for the driver to run (then [`Broker::finish_call`]).
#[derive(Debug)]
pub struct Incoming<O> {
    /// The peer's request id.
    pub id: u64,
    /// The target's id on this connection (0 for the root).
    pub target: u64,
    /// The object called.
    pub object: O,
    /// The call's frame body; the method name and the arguments are slices of it.
    pub body: Bytes,
    /// Where the method name is in `body`.
    pub method: Range<usize>,
    /// Where the arguments start in `body`.
    pub args_at: usize,
    /// The references the arguments point into.
    pub refs: Vec<O>,
    /// Whether an answer is wanted (then the call can be cancelled: see [`Broker::watch`]).
    pub answer: bool,
    /// How long the caller waits, in milliseconds from now.
    pub deadline_ms: Option<u64>,
    /// The caller's signature of the method and its trace context, if it sent them.
    pub extras: CallExtras,
    /// What the call counts in our call window until it ends: handed back to
    /// [`Broker::finish_call`].
    pub charge: usize,
    /// The frame's tail, if it came split: the arguments' last byte string (see
    /// [`Arrived`]).
    pub tail: Option<Box<Bytes>>,
}

/// What the driver must do once it lets go of the broker (see [`Broker::poll_events`]).
#[derive(Debug)]
pub enum Event<T: Tokens> {
    /// The answer to one of our calls arrived, or the connection's end failed it: wake its
    /// caller, who takes it with [`Broker::poll_answer`].
    Answered(T::Waiter),
    /// One of our objects was sent to the peer for the first time, under `id`. A forward
    /// must be watched: if the object it forwards to dies, [`Broker::revoke_export`].
    Exported {
        /// The id the peer knows it by.
        id: u64,
        /// The object.
        object: T::Object,
    },
    /// One of our objects, exported under `id` already, was sent again.
    Resent {
        /// The id the peer knows it by.
        id: u64,
        /// The object.
        object: T::Object,
    },
    /// The peer no longer holds our object exported under `id`: it released every send of it,
    /// or the connection ended.
    Unexported {
        /// The id the export had (a later export of the same object gets a new one).
        id: u64,
        /// The object.
        object: T::Object,
    },
    /// A reference the peer gave us is dead: the peer revoked it, or the connection ended. No
    /// release is sent for it.
    Revoked(T::Import),
    /// A new version of a cache the peer owns, for the replica held through `import`.
    Update {
        /// The handle of the reference to the cache.
        import: T::Import,
        /// The encoded update.
        payload: Bytes,
    },
    /// The peer cancelled one of its calls: dropping or firing the watch tells the handler.
    Cancelled(T::Watch),
    /// An object the broker let go of (a reference in an answer nobody waits for, a revoked
    /// export): dropped by the driver, whose drop may use this very connection.
    Dropped(T::Object),
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow both ways.
    Open,
    /// A graceful close started: no new calls are taken (they and the calls held back are
    /// refused with `ShuttingDown`), running ones finish.
    Draining,
    /// The connection is gone: nothing is sent or taken any more.
    Closed,
}

/// One connection's protocol state. See the [module docs](self).
pub struct Broker<T: Tokens> {
    limits: Limits,
    conn_id: u64,
    state: State,
    peer_goodbye: bool,
    root: Option<T::Object>,
    root_key: Option<usize>,
    /// Our objects the peer holds, keyed by the objects' keys; ids we allocate.
    exports: Exports<T::Object>,
    /// Keyed by the peer's ids: hashed under a secret the peer does not know.
    imports: Imports<T::Import>,
    /// Our calls awaiting answers, each holding its caller's waiter until the answer arrives.
    pending: Pending<Option<T::Waiter>, Reply<T::Object, Arrived>>,
    /// The peer's calls running here; those whose handlers wait hold a watch.
    running: Running<T::Watch>,
    events: Vec<Event<T>>,
    out: Outbox,
    releases: Vec<(u64, u64)>,
    violations: u32,
    /// What calls fail with once the connection is closed.
    close_fault: Option<Fault>,
    /// What the peer accepts: what its hello said (or a limits message since), what a peer
    /// that says nothing is assumed to accept, or, until its hello has arrived,
    /// [`ReceiveLimits::FLOOR`].
    peer: ReceiveLimits,
    /// Whether the peer's hello has arrived (`peer` is no longer the floor).
    peer_known: bool,
    /// Whether the peer's hello carried its limits: it understands a limits message.
    peer_hears_limits: bool,
    /// Our receive limits as the peer last heard them.
    announced: ReceiveLimits,
    /// Whether the peer's hello carried a call window: it takes credits, and a cancelled
    /// call's closing fault, and counts its own.
    peer_hears_window: bool,
    /// The peer reads split frames: calls and answers whose payload ends with a large byte
    /// string are sent split ([`Broker::set_split_frames`]).
    split_frames: bool,
    /// Bytes of the peer's calls held back or running here, against `limits.max_call_bytes`.
    call_bytes: usize,
    /// Bytes of our calls in the peer's call window: sent and not yet answered, credited, or
    /// (cancelled) closed by the peer's last word.
    window_used: usize,
    /// Our calls that did not fit in the peer's window yet, in order: sent as answers and
    /// credits make room.
    parked: std::collections::VecDeque<Parked>,
    /// Bytes of the peer's calls that ended here without an answer, for the next credit.
    credit_due: u64,
    /// The peer's objects that frames the driver holds back name, and how many of them name
    /// each: a revocation or update of one of them waits behind them
    /// ([`Broker::must_follow_held`]). Made when a frame is first held back: most connections
    /// never hold one, and an idle one keeps its state small.
    // Boxed for its size (8 bytes where the map is 48): the extra allocation is made only by
    // a connection that holds frames back.
    #[allow(clippy::box_collection)]
    held_objects: Option<Box<std::collections::HashMap<u64, usize, PeerKeys>>>,
    /// How many frames the driver holds back ([`Broker::hold_frame`]) and has not handed
    /// back yet (handled or dropped): a graceful close waits for them too.
    held: usize,
}

/// One of our calls waiting for room in the peer's call window: its frame, encoded.
#[derive(Debug)]
struct Parked {
    id: u64,
    /// The frame body's length, as the peer's window counts it.
    len: usize,
    /// Our objects the call sends (counted as sent when it was encoded): given back if the
    /// call is cancelled before it leaves, as the peer never learns of them.
    exported: Vec<u64>,
    /// The call's deadline, and where its time left (a varint) is in the frame's first piece:
    /// written again with the time left when the call leaves.
    deadline: Option<calls::TimeLeft>,
    /// The frame: its header and envelope, then its payload (small pieces copied in with
    /// the envelope, large ones uncopied, see [`ZERO_COPY_MIN`](crate::outbox::ZERO_COPY_MIN)).
    frame: Vec<Bytes>,
    /// Frames that must follow the call out, whole: updates and revocations of objects it (or
    /// a call before it) sends ([`Broker::queue_naming`]).
    behind: Vec<Bytes>,
}

impl<T: Tokens> std::fmt::Debug for Broker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("conn_id", &self.conn_id)
            .field("state", &self.state)
            .field("stats", &self.stats())
            .field("queued", &self.out.len())
            .finish()
    }
}

impl<T: Tokens> Broker<T> {
    /// The state of connection `conn_id` (the id [`Tokens::classify`] is asked about), serving
    /// `root` as object 0. The peer's limits are [`ReceiveLimits::FLOOR`] until its hello
    /// arrives ([`Broker::set_peer_limits`]).
    pub fn new(limits: Limits, conn_id: u64, root: Option<T::Object>) -> Broker<T> {
        let root_key = root.as_ref().and_then(|r| key_of::<T>(r, conn_id));
        let peer_keys = PeerKeys::new();
        let limits = limits.enforced();
        Broker {
            announced: limits.receive(),
            limits,
            conn_id,
            state: State::Open,
            peer_goodbye: false,
            root,
            root_key,
            exports: Exports::new(),
            imports: Imports::with_keys(peer_keys),
            pending: Pending::new(),
            running: Running::with_keys(peer_keys),
            events: Vec::new(),
            out: Outbox::new(),
            releases: Vec::new(),
            violations: 0,
            close_fault: None,
            peer: ReceiveLimits::FLOOR,
            peer_known: false,
            peer_hears_limits: false,
            peer_hears_window: false,
            split_frames: false,
            call_bytes: 0,
            window_used: 0,
            parked: std::collections::VecDeque::new(),
            credit_due: 0,
            held_objects: None,
            held: 0,
        }
    }

    /// Where the connection is in its life.
    #[inline]
    pub fn state(&self) -> State {
        self.state
    }

    /// The limits in force (as enforced: raised to the floor where lower).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What the peer accepts, as far as we know (see [`Broker::set_peer_limits`]).
    pub fn peer_limits(&self) -> ReceiveLimits {
        self.peer
    }

    /// Change the largest frame we accept; returns the limit as enforced (never below the
    /// floor). A peer that announced its own limits hears of ours at once (a limits message),
    /// so that it may send larger frames after a login, say.
    pub fn set_max_frame_len(&mut self, len: usize) -> usize {
        self.limits.max_frame_len = len;
        self.limits = self.limits.enforced();
        self.announce_limits();
        self.limits.max_frame_len
    }

    /// Change our call window ([`Limits::max_call_bytes`]); returns it as enforced (at least
    /// four of our largest frames). A peer that has a window of its own hears of it at once (a
    /// limits message). Meant to grow it (after a login, say): calls the peer sent before it
    /// heard of a smaller window may be refused.
    pub fn set_max_call_bytes(&mut self, bytes: usize) -> usize {
        self.limits.max_call_bytes = bytes;
        self.limits = self.limits.enforced();
        self.announce_limits();
        self.limits.max_call_bytes
    }

    /// The peer's hello arrived, with its limits if it carried them (a peer that announces
    /// none is assumed to accept [`ReceiveLimits::ASSUMED`]). Returns whether that queued
    /// output (our own limits, if they changed since our hello left).
    pub fn set_peer_limits(&mut self, limits: Option<ReceiveLimits>) -> bool {
        self.peer_known = true;
        self.peer_hears_limits = limits.is_some();
        self.peer_hears_window = limits.is_some_and(|l| l.max_call_bytes.is_some());
        let queued = self.set_peer(limits.unwrap_or(ReceiveLimits::ASSUMED));
        self.announce_limits() || queued
    }

    /// Send split frames from now on, or not: both sides announced
    /// [`Features::TAILS`](crate::handshake::Features::TAILS). A call or answer whose payload
    /// ends with a byte string of [`MIN_TAIL`](crate::frame::MIN_TAIL) bytes or more then goes
    /// split ([`Payload::take_tail`]).
    pub fn set_split_frames(&mut self, on: bool) {
        self.split_frames = on;
    }

    /// The peer's limits are `limits` from now on. A window that grew (or went) lets parked
    /// calls leave; returns whether any did.
    fn set_peer(&mut self, limits: ReceiveLimits) -> bool {
        self.peer = limits;
        if limits.max_call_bytes.is_none() {
            // A peer that counts nothing: what we counted no longer matters, and no last word
            // will come for the calls we cancelled.
            self.window_used = 0;
            self.pending.forget_cancelled();
        }
        self.unpark()
    }

    /// Tell the peer our receive limits if they changed since it last heard them and it
    /// understands a limits message (before its hello has arrived it cannot be told yet:
    /// [`Broker::set_peer_limits`] does it then). Returns whether a message was queued.
    fn announce_limits(&mut self) -> bool {
        let current = self.limits.receive();
        if current == self.announced
            || !self.peer_known
            || !self.peer_hears_limits
            || self.state == State::Closed
        {
            return false;
        }
        self.announced = current;
        // A peer without a window would refuse the field that carries ours.
        let told = ReceiveLimits {
            max_call_bytes: current.max_call_bytes.filter(|_| self.peer_hears_window),
            ..current
        };
        self.write_message(&Message::Limits(told));
        true
    }

    /// How full the tables are.
    pub fn stats(&self) -> TableStats {
        TableStats {
            exported: self.exports.len(),
            imported: self.imports.len(),
            pending_calls: self.pending.len(),
            in_flight_calls: self.running.in_flight(),
            call_bytes: self.call_bytes,
            parked_calls: self.parked.len(),
        }
    }

    /// How many of the peer's calls are running here.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.running.in_flight()
    }

    /// How many of the peer's frames the driver holds back ([`Broker::hold_frame`]) and has
    /// not handed back yet ([`Broker::handle_held_frame`], [`Broker::drop_held_call`]).
    #[inline]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Whether a draining connection is done: no call of the peer's runs here, and none of
    /// its frames is held back. A held call is refused with `ShuttingDown` once handled (a
    /// draining broker runs none), so a graceful close that waits for this answers every
    /// call it read.
    #[inline]
    pub fn is_drained(&self) -> bool {
        self.running.in_flight() == 0 && self.held == 0
    }

    /// How many of our calls await answers.
    #[inline]
    pub fn pending_calls(&self) -> usize {
        self.pending.len()
    }

    /// Replace the object served as our root; the old one is given back.
    pub fn set_root(&mut self, root: Option<T::Object>) -> Option<T::Object> {
        self.root_key = root.as_ref().and_then(|r| key_of::<T>(r, self.conn_id));
        std::mem::replace(&mut self.root, root)
    }

    /// Stop taking new calls and let running calls finish; with `goodbye`, tell the peer (a
    /// close with nothing running skips it: the end of the stream follows at once).
    pub fn start_draining(&mut self, goodbye: bool) {
        if self.state == State::Open {
            self.state = State::Draining;
            if goodbye {
                self.write_message(&Message::Goodbye);
            }
        }
    }

    /// The connection is gone: every pending call (and every call started later) fails with
    /// `fault`, running ones are cancelled (their watches dropped), the tables are emptied.
    /// What they held comes out as events: callers to wake, exports ended, imports dead.
    pub fn close(&mut self, fault: Fault) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        let events = &mut self.events;
        events.extend(self.imports.drain().map(Event::Revoked));
        // Every caller still waiting finds its call gone, which fails it with `fault` (kept in
        // `close_fault`); answers that arrived before the end stay for their callers to take.
        self.pending
            .fail_waiting(|waiter| events.extend(waiter.take().map(Event::Answered)));
        self.running.clear();
        // The reader drops what it held back: nothing of it will be handled any more.
        self.held = 0;
        self.releases.clear();
        // Calls never sent: those that wait for answers were failed above.
        self.parked.clear();
        self.call_bytes = 0;
        self.credit_due = 0;
        self.close_fault = Some(fault);
        events.extend(
            self.exports
                .drain()
                .map(|(id, object)| Event::Unexported { id, object }),
        );
        events.extend(self.root.take().map(Event::Dropped));
        self.root_key = None;
    }

    /// Move what the driver must do into `into`, in the order it arose. The driver acts on
    /// it once it lets go of the broker: acting may run user code that uses this connection.
    ///
    /// With nothing to move, the broker keeps its list: handing its room to an `into` that is
    /// dropped empty (most steps raise no event) would make the next event allocate.
    #[inline]
    pub fn poll_events(&mut self, into: &mut Vec<Event<T>>) {
        if self.events.is_empty() {
            return;
        }
        if into.is_empty() {
            std::mem::swap(into, &mut self.events);
        } else {
            into.append(&mut self.events);
        }
    }

    /// Whether events wait for [`Broker::poll_events`].
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }
}

/// The export key of an object we send, or `None` for the peer's own.
#[inline]
fn key_of<T: Tokens>(object: &T::Object, conn: u64) -> Option<usize> {
    match T::classify(object, conn) {
        Sending::Exported(key) => Some(key),
        Sending::Returned(_) => None,
    }
}

/// Whether a call of this size stays within [`ReceiveLimits::FLOOR`], which any peer accepts,
/// even one whose hello has not arrived yet. Checked with the call's largest possible
/// envelope, as [`Broker::start_call`] does.
pub fn fits_floor(method_len: usize, payload_len: usize, refs: usize) -> bool {
    let floor = ReceiveLimits::FLOOR;
    refs <= floor.max_refs_per_message
        && call_len_max(method_len, payload_len, refs) <= floor.max_frame_len
}

/// The largest a call's frame body can be, whatever its ids and references.
fn call_len_max(method_len: usize, payload_len: usize, refs: usize) -> usize {
    CALL_HEAD_MAX + method_len + refs * REF_DESC_MAX + payload_len
}
