//! The broker: one connection's protocol state.
//!
//! It reads and writes no socket, but it is not yet the I/O-free state machine it will be: it
//! still holds the driver's handles (imported references, callers' wakers, cancellation
//! senders) and calls the object hooks `on_export` / `on_resend` under its lock (`on_unexport`
//! runs after it, from the [`Graveyard`] the driver drops). Its wire, output queue, limits and
//! tables (exports, imports, calls) are pb-proto's, over ids and the driver's tokens; what is
//! left here joins them to the driver's objects, and becoming a pb-proto state machine whose
//! hooks are events is the next step.
//!
//! It owns the tables of a connection (objects exported to the peer, references imported from
//! it, calls awaiting answers, incoming calls in flight) and the request-id counter of our
//! direction. Input comes in through `handle_frame`, `start_call`, `finish_call`,
//! `cancel_call` and `release_imported`; output goes out through `take_transmit` (encoded
//! frames) and what `handle_frame` returns (an incoming call to run). The tokio driver in
//! [`crate::connection`] pumps it.
//!
//! ```text
//! connection:  Open ──goodbye sent──▶ Draining ──in-flight calls done──▶ Closed
//!                 └──────────────── error / EOF / abort ──────────────────▲
//! outgoing call: start_call ─▶ pending ─answer│fault─▶ answered ─poll_answer─▶ delivered
//!                                     └─cancel_call─▶ forgotten (Cancel sent)
//! incoming call: Call ─▶ running (event) ─finish_call─▶ Answer│Fault sent
//!                              └─Cancel from peer─▶ handler dropped, nothing sent
//! ```
//!
//! Reference counting: every time we send a reference to one of our objects its export count
//! goes up by one; the peer counts how many times it received it and, when its last handle is
//! dropped, sends that count back in a release. The object is freed when its count reaches zero,
//! so a release that crosses a new send of the same object never frees an object the peer holds.
//!
//! # Layout
//! This file holds the types, the limits and the connection's life (`new`, limits, draining,
//! `close`); the parts: `calls` (ours and the peer's), `input` (the peer's frames), `refs`
//! (references in messages), `output` (what is queued, within the peer's limits).

use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use pb_proto::calls::{Pending, Polled, Running};
use pb_proto::exports::{Exports, Released, Sent};
use pb_proto::hash::PeerKeys;
use pb_proto::imports::Imports;
use pb_proto::outbox::{Outbox, ZERO_COPY_MIN};
use tokio::sync::oneshot;

use crate::connection::{ConnShared, ExportLink, Imported};
use crate::handshake::ReceiveLimits;
use crate::message::{
    self, CallHead, FaultKind, Message, RefDesc, encode_answer_frame_head, encode_answer_head,
    encode_call_frame_head, encode_update_head,
};
use crate::object::{Fault, ObjectRef, Outcome, RefInner, Reply, disconnected_fault};
pub use pb_proto::limits::{Limits, ProtocolError, TableStats};

mod calls;
mod input;
mod output;
mod refs;

// The parts see each other through the parent (each opens with `use super::*`).
#[allow(unused_imports)]
use self::{calls::*, input::*, output::*, refs::*};

/// The most bytes a call's envelope takes besides its method name and references: tag and
/// flags, then id, target and deadline (a varint of at most 10 bytes each), the method name's
/// length (2 for the longest name) and the reference count (10). Messages are checked against
/// the peer's `max_frame_len` with their envelope's largest size, so none that passes can be
/// refused by the peer.
const CALL_HEAD_MAX: usize = 2 + 3 * 10 + 2 + 10;

/// The most bytes an answer's envelope takes besides its references: tag, id (10), outcome and
/// reference count (10).
const ANSWER_HEAD_MAX: usize = 1 + 10 + 1 + 10;

/// The most bytes one reference descriptor takes: its kind and a varint id.
const REF_DESC_MAX: usize = 1 + 10;

/// The most bytes one release entry takes: two varints.
const RELEASE_ENTRY_MAX: usize = 2 * 10;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    Draining,
    Closed,
}

/// Who writes output that a caller queued (see [`Broker::who_flushes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// The caller, at once.
    Caller,
    /// The reader, at the end of the batch it is handling.
    Reader,
    /// The writer task.
    Writer,
}

/// The encoded arguments of a call we make.
pub(crate) enum Payload {
    /// Bytes of their own (`ObjectRef::call_raw`, forwarded calls).
    Bytes(Bytes),
    /// In a scratch buffer, copied into the output (or, if large, queued as their own chunk).
    Encoded(crate::codec::Encoded),
}

impl Payload {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Bytes(b) => b,
            Payload::Encoded(e) => e.as_slice(),
        }
    }

    /// The payload as `Bytes` (a copy only for a small encoded one).
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Payload::Bytes(b) => b,
            Payload::Encoded(e) => e.into_bytes(),
        }
    }
}

/// Descriptors for a message's references, and what must follow the message.
type Described = (Vec<RefDesc>, Vec<Follow>);

/// A message that must follow the one carrying a reference.
pub(crate) enum Follow {
    /// A cache's newer state.
    Update(u64, Bytes),
    /// A forward of an object that is already dead.
    Revoke(u64),
}

/// An incoming call for the driver to run.
pub(crate) struct CallEvent {
    pub(crate) id: u64,
    /// The target's id on this connection (0 for the root), for tracing.
    pub(crate) target: u64,
    pub(crate) object: ObjectRef,
    /// The call's frame body; the method name and the arguments are slices of it.
    pub(crate) body: Bytes,
    pub(crate) method: std::ops::Range<usize>,
    /// Where the arguments start in `body`.
    pub(crate) args_at: usize,
    pub(crate) refs: Vec<ObjectRef>,
    /// Whether an answer is wanted (then the call can be cancelled: see
    /// [`Broker::watch_cancel`]).
    pub(crate) answer: bool,
    /// How long the caller waits, from now.
    pub(crate) deadline: Option<std::time::Duration>,
}

/// One connection's protocol state.
pub(crate) struct Broker {
    limits: Limits,
    conn_id: u64,
    /// This connection, for exported objects that push updates (caches).
    link: Weak<ConnShared>,
    pub(crate) state: State,
    peer_goodbye: bool,
    root: Option<ObjectRef>,
    root_key: Option<usize>,
    /// Keyed by ids we allocate (the peer only looks them up, it never chooses what goes in),
    /// so a cheap hash will do.
    /// Our objects the peer holds, keyed by their allocations' addresses (`export_key`).
    exports: Exports<ObjectRef>,
    /// Keyed by the peer's ids: hashed under a secret the peer does not know.
    imports: Imports<Weak<Imported>>,
    /// Our calls awaiting answers, each holding its caller's waker until the answer arrives.
    pending: Pending<Option<Waker>, Reply>,
    /// Callers whose answers arrived, to wake once the lock is released.
    wakers: Vec<Waker>,
    /// The reader is handling a batch of frames and flushes once it is done.
    pub(crate) in_batch: bool,
    /// The peer's calls running here; those running in tasks of their own (a call answered
    /// inline never enters) hold a sender that fires (or is dropped) when the call is cancelled.
    running: Running<Option<oneshot::Sender<()>>>,
    out: Outbox,
    releases: Vec<(u64, u64)>,
    violations: u32,
    /// References the peer revoked, to mark dead once the lock is released.
    revoked: Vec<Arc<Imported>>,
    /// Objects withdrawn under the lock, dropped once it is released.
    graveyard: Vec<ObjectRef>,
    /// Local objects whose export to this connection ended, with the id they had: their
    /// `on_unexport` hook runs once the lock is released (see [`Graveyard`]).
    unexported: Vec<(ObjectRef, u64)>,
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
}

impl Broker {
    pub(crate) fn new(
        limits: Limits,
        conn_id: u64,
        root: Option<ObjectRef>,
        link: Weak<ConnShared>,
    ) -> Broker {
        let root_key = root.as_ref().and_then(export_key);
        let peer_keys = PeerKeys::new();
        let limits = limits.enforced();
        Broker {
            announced: limits.receive(),
            limits,
            conn_id,
            link,
            state: State::Open,
            peer_goodbye: false,
            root,
            root_key,
            exports: Exports::new(),
            imports: Imports::with_keys(peer_keys),
            pending: Pending::new(),
            wakers: Vec::new(),
            in_batch: false,
            running: Running::with_keys(peer_keys),
            out: Outbox::new(),
            releases: Vec::new(),
            violations: 0,
            revoked: Vec::new(),
            graveyard: Vec::new(),
            unexported: Vec::new(),
            close_fault: None,
            peer: ReceiveLimits::FLOOR,
            peer_known: false,
            peer_hears_limits: false,
        }
    }

    /// Change the largest frame we accept; returns the limit as enforced (never below the
    /// floor). A peer that announced its own limits hears of ours at once (a limits message),
    /// so that it may send larger frames after a login, say.
    pub(crate) fn set_max_frame_len(&mut self, len: usize) -> usize {
        self.limits.max_frame_len = len;
        self.limits = self.limits.enforced();
        self.announce_limits();
        self.limits.max_frame_len
    }

    /// The peer's hello arrived, with its limits if it carried them (a peer that announces
    /// none is assumed to accept [`ReceiveLimits::ASSUMED`]). Returns whether that queued
    /// output (our own limits, if they changed since our hello left).
    pub(crate) fn set_peer_limits(&mut self, limits: Option<ReceiveLimits>) -> bool {
        self.peer = limits.unwrap_or(ReceiveLimits::ASSUMED);
        self.peer_known = true;
        self.peer_hears_limits = limits.is_some();
        self.announce_limits()
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
        self.write_message(&Message::Limits(current));
        true
    }

    /// Whether a call of this size stays within [`ReceiveLimits::FLOOR`], which any peer
    /// accepts, even one whose hello has not arrived yet. Checked with the call's largest
    /// possible envelope, as [`Broker::start_call`] does.
    pub(crate) fn fits_floor(method_len: usize, payload_len: usize, refs: usize) -> bool {
        let floor = ReceiveLimits::FLOOR;
        refs <= floor.max_refs_per_message
            && call_len_max(method_len, payload_len, refs) <= floor.max_frame_len
    }

    pub(crate) fn stats(&self) -> TableStats {
        TableStats {
            exported: self.exports.len(),
            imported: self.imports.len(),
            pending_calls: self.pending.len(),
            in_flight_calls: self.running.in_flight(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.running.in_flight()
    }

    /// Replace the object served as our root.
    pub(crate) fn set_root(&mut self, root: Option<ObjectRef>) -> Option<ObjectRef> {
        self.root_key = root.as_ref().and_then(export_key);
        std::mem::replace(&mut self.root, root)
    }

    /// Stop taking new calls and let running calls finish; with `goodbye`, tell the peer (a
    /// close with nothing running skips it: the end of the stream follows at once).
    pub(crate) fn start_draining(&mut self, goodbye: bool) {
        if self.state == State::Open {
            self.state = State::Draining;
            if goodbye {
                self.write_message(&Message::Goodbye);
            }
        }
    }

    /// The connection is gone: fail every pending call (and every call started later) with
    /// `fault`, cancel running ones, empty the tables. Returns what was held, for the caller to
    /// drop outside any lock.
    pub(crate) fn close(&mut self, fault: Fault) -> (Graveyard, Vec<Arc<Imported>>) {
        self.state = State::Closed;
        let imports: Vec<Arc<Imported>> =
            self.imports.drain().filter_map(|h| h.upgrade()).collect();
        // Every caller still waiting finds its call gone, which fails it with `fault` (kept in
        // `close_fault`);
        // answers that arrived before the end stay for their callers to take.
        let wakers = &mut self.wakers;
        self.pending
            .fail_waiting(|waker| wakers.extend(waker.take()));
        self.running.clear();
        self.releases.clear();
        self.close_fault = Some(fault);
        for (id, object) in self.exports.drain() {
            match &object.0 {
                RefInner::Local(_) => self.unexported.push((object, id)),
                RefInner::Remote(_) => self.graveyard.push(object),
            }
        }
        self.graveyard.extend(self.root.take());
        self.root_key = None;
        (self.take_graveyard(), imports)
    }
}

/// What the broker let go of under its lock, for the driver to drop once the lock is released:
/// objects whose `Drop` may use this very connection, and local objects whose export to it
/// ended, whose `on_unexport` hook runs when this is dropped, outside every lock.
pub(crate) struct Graveyard {
    conn_id: u64,
    objects: Vec<ObjectRef>,
    unexported: Vec<(ObjectRef, u64)>,
}

impl Drop for Graveyard {
    fn drop(&mut self) {
        for (object, id) in self.unexported.drain(..) {
            if let RefInner::Local(d) = &object.0 {
                d.on_unexport(self.conn_id, id);
            }
        }
        // `objects` are dropped with the struct, after the hooks.
        self.objects.clear();
    }
}

/// The most entries a release list keeps room for between batches (16 KiB or 24 KiB).
pub(crate) const KEEP_RELEASES: usize = 1024;
