//! The broker: one connection's protocol state, with no I/O.
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

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use pb_proto::hash::{IdHasher, PeerKeys};
use pb_proto::outbox::{Outbox, ZERO_COPY_MIN};
use tokio::sync::oneshot;

use crate::connection::{ConnShared, ExportLink, Imported};
use crate::handshake::ReceiveLimits;
use crate::message::{
    self, CallHead, FaultKind, Message, MessageError, MessageLimits, RefDesc,
    encode_answer_frame_head, encode_answer_head, encode_call_frame_head, encode_update_head,
};
use crate::object::{Fault, ObjectRef, Outcome, RefInner, Reply, disconnected_fault};

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

/// Limits of one connection. Every limit has a safe default.
///
/// The limits on what the peer may send (`max_frame_len` and those in `message`) are announced
/// to the peer in the hello, and the peer holds what it sends to them: a call or an answer over
/// a peer's limit fails alone, with [`crate::CallError::LimitExceeded`], instead of costing the
/// connection. They are never below [`ReceiveLimits::FLOOR`] (lower settings are raised to it),
/// so that a dialer's first calls, sent before the peer's hello has arrived, never exceed them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame body accepted or sent (default 16 MiB, at least 64 KiB, at most 64 MiB).
    /// What we send is also held to the peer's own `max_frame_len`.
    pub max_frame_len: usize,
    /// Most of our calls awaiting answers at once (default 10 000).
    pub max_pending_calls: usize,
    /// Most incoming calls running at once (default 1 024).
    pub max_in_flight_calls: usize,
    /// Most objects exported to the peer at once, root excluded (default 10 000).
    pub max_exports: usize,
    /// Most distinct references imported from the peer at once (default 10 000).
    pub max_imports: usize,
    /// Limit violations tolerated before the connection is closed (default 3, as Twisted).
    pub max_violations: u32,
    /// Deepest nesting of a decoded argument or answer value (default
    /// [`crate::codec::DEFAULT_MAX_DEPTH`], 128); deeper values fail to decode.
    pub max_depth: usize,
    /// Most bytes queued for the peer and not yet written (default 4 MiB). Above it the
    /// connection applies backpressure: our own callers wait before queueing new calls, and
    /// the peer's calls, releases and pings are held back, still read but not run, until half
    /// of the queue has gone out; once `max_in_flight_calls` frames are held back, reading
    /// pauses. A peer that sends without reading thus costs a bounded amount of memory, and is
    /// disconnected after `Config::write_stall_timeout` without progress.
    pub max_unsent_bytes: usize,
    /// Limits on message envelopes (at least 16 references per message and 16 release entries
    /// per message).
    pub message: MessageLimits,
}

impl Limits {
    /// What these limits let the peer send, as our hello announces it: raised to
    /// [`ReceiveLimits::FLOOR`], and the frame size capped at
    /// [`crate::frame::MAX_FRAME_LEN_CEILING`], as the connection enforces them.
    pub fn receive(&self) -> ReceiveLimits {
        let limits = ReceiveLimits {
            max_frame_len: self.max_frame_len,
            max_refs_per_message: self.message.max_refs_per_message,
            max_release_entries: self.message.max_release_entries,
        }
        .at_least_floor();
        ReceiveLimits {
            max_frame_len: limits
                .max_frame_len
                .min(crate::frame::MAX_FRAME_LEN_CEILING),
            ..limits
        }
    }

    /// These limits as a connection enforces them (see [`Limits::receive`]).
    pub(crate) fn enforced(&self) -> Limits {
        let receive = self.receive();
        Limits {
            max_frame_len: receive.max_frame_len,
            message: MessageLimits {
                max_refs_per_message: receive.max_refs_per_message,
                max_release_entries: receive.max_release_entries,
            },
            ..self.clone()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: crate::frame::DEFAULT_MAX_FRAME_LEN,
            max_pending_calls: 10_000,
            max_in_flight_calls: 1024,
            max_exports: 10_000,
            max_imports: 10_000,
            max_violations: 3,
            max_depth: crate::codec::DEFAULT_MAX_DEPTH,
            max_unsent_bytes: 4 << 20,
            message: MessageLimits::default(),
        }
    }
}

/// The peer broke the protocol; the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame body did not decode as a message.
    #[error("malformed message: {0}")]
    Message(#[from] MessageError),
    /// The peer reused the id of a call still in flight.
    #[error("request id {0} reused while in flight")]
    DuplicateRequest(u64),
    /// The peer exceeded limits too often.
    #[error("too many limit violations ({count}, max_violations = {max})")]
    TooManyViolations {
        /// How many there were.
        count: u32,
        /// The configured tolerance.
        max: u32,
    },
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    Draining,
    Closed,
}

struct Export {
    object: ObjectRef,
    count: u64,
}

struct ImportSlot {
    handle: Weak<Imported>,
    generation: u64,
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

/// One of our calls awaiting its answer: a slot in the pending table instead of a channel, so
/// a call allocates nothing to be answered.
///
/// ```text
/// start_call ─▶ Waiting ─answer│fault─▶ Answered ─poll_answer─▶ removed (the caller has it)
///                  └───────────────┴──cancel_call (caller gone)─▶ removed
/// ```
enum PendingCall {
    /// No answer yet; the waker of the caller's latest poll.
    Waiting(Option<Waker>),
    /// The answer, until the caller's next poll takes it.
    Answered(Reply),
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

/// Counts of one connection's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Objects we export to the peer (root excluded).
    pub exported: usize,
    /// Distinct references we hold to the peer's objects (root excluded).
    pub imported: usize,
    /// Our calls awaiting answers.
    pub pending_calls: usize,
    /// The peer's calls running here.
    pub in_flight_calls: usize,
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
    exports: HashMap<u64, Export, BuildHasherDefault<IdHasher>>,
    /// Keyed by the addresses of our own objects.
    export_keys: HashMap<usize, u64, BuildHasherDefault<IdHasher>>,
    next_export: u64,
    /// Keyed by the peer's ids: hashed under a secret the peer does not know.
    imports: HashMap<u64, ImportSlot, PeerKeys>,
    next_generation: u64,
    /// Keyed by our own request ids (sequential, never chosen by the peer), so a cheap hash
    /// will do.
    pending: HashMap<u64, PendingCall, BuildHasherDefault<IdHasher>>,
    /// Callers whose answers arrived, to wake once the lock is released.
    wakers: Vec<Waker>,
    /// The reader is handling a batch of frames and flushes once it is done.
    pub(crate) in_batch: bool,
    next_request: u64,
    /// Answered calls running in tasks of their own (a call answered inline never enters);
    /// the sender fires (or is dropped) when the call is cancelled.
    /// Keyed by the peer's request ids: hashed under a secret the peer does not know.
    running: HashMap<u64, Option<oneshot::Sender<()>>, PeerKeys>,
    in_flight: usize,
    out: Outbox,
    releases: Vec<(u64, u64)>,
    violations: u32,
    /// References the peer revoked, to mark dead once the lock is released.
    revoked: Vec<Arc<Imported>>,
    /// Objects withdrawn under the lock, dropped once it is released.
    graveyard: Vec<ObjectRef>,
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
            exports: HashMap::default(),
            export_keys: HashMap::default(),
            next_export: 1,
            imports: HashMap::with_hasher(peer_keys),
            next_generation: 1,
            pending: HashMap::default(),
            wakers: Vec::new(),
            in_batch: false,
            next_request: 1,
            running: HashMap::with_hasher(peer_keys),
            in_flight: 0,
            out: Outbox::new(),
            releases: Vec::new(),
            violations: 0,
            revoked: Vec::new(),
            graveyard: Vec::new(),
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
            in_flight_calls: self.in_flight,
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Replace the object served as our root.
    pub(crate) fn set_root(&mut self, root: Option<ObjectRef>) -> Option<ObjectRef> {
        self.root_key = root.as_ref().and_then(export_key);
        std::mem::replace(&mut self.root, root)
    }

    // ---- output ------------------------------------------------------------------------

    /// Whether the broker holds anything to send to the peer.
    pub(crate) fn has_transmit(&self) -> bool {
        !self.out.is_empty() || !self.releases.is_empty()
    }

    /// Append the frames to write to `into`, in order; appends nothing when there is nothing to
    /// send.
    #[cfg(test)]
    pub(crate) fn take_transmit(&mut self, into: &mut Vec<Bytes>) {
        let mut tail = BytesMut::new();
        self.take_transmit_to(into, &mut tail);
        if !tail.is_empty() {
            into.push(tail.freeze());
        }
    }

    /// Hand over the frames to write: whole chunks are appended to `into`, and the output
    /// buffer, which follows them, is exchanged for `tail` (what `tail` held goes to `into`
    /// first, keeping the order), so the buffer's written allocation comes back for reuse
    /// without splitting a chunk off it. Returns how many bytes were handed over.
    pub(crate) fn take_transmit_to(&mut self, into: &mut Vec<Bytes>, tail: &mut BytesMut) -> usize {
        // Whatever a batch's handlers queued goes out with this.
        self.in_batch = false;
        if !self.releases.is_empty() && self.state != State::Closed {
            // Taken and given back, so the list keeps its capacity from batch to batch.
            let mut items = std::mem::take(&mut self.releases);
            // As many entries as the peer takes in one message, and in one frame (after the
            // envelope: tag and entry count).
            let room = self.send_frame_limit().0.saturating_sub(1 + 10);
            let per_frame = room / RELEASE_ENTRY_MAX;
            let per_message = self.peer.max_release_entries.min(per_frame).max(1);
            for batch in items.chunks(per_message) {
                self.write_frame(|out| message::encode_release(out, batch));
            }
            // Unless a burst made it large: an idle connection keeps little.
            if items.capacity() <= KEEP_RELEASES {
                items.clear();
                self.releases = items;
            }
        }
        self.out.take_to(into, tail)
    }

    /// Queue bytes that are not a message (the hello of a dialed connection) before anything
    /// else is queued.
    pub(crate) fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.queue_raw(bytes);
    }

    /// Bytes queued for the peer and not yet taken by `take_transmit`.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    /// Room for a frame header, an envelope of about `head` bytes and a payload that will be
    /// copied in.
    fn reserve_frame(&mut self, head: usize, payload: &[u8]) {
        self.out.reserve_frame(head, payload);
    }

    fn write_message(&mut self, m: &Message) {
        self.write_frame(|out| m.encode(out));
    }

    /// Queue one frame whose body `body` writes.
    fn write_frame(&mut self, body: impl FnOnce(&mut BytesMut)) {
        self.out.write_frame(body);
    }

    fn send_fault(&mut self, id: u64, kind: FaultKind, message: String) {
        self.write_message(&Message::Fault { id, kind, message });
    }

    /// The largest frame body we may send: ours, or the peer's if it is smaller (then
    /// `true`).
    fn send_frame_limit(&self) -> (usize, bool) {
        if self.peer.max_frame_len < self.limits.max_frame_len {
            (self.peer.max_frame_len, true)
        } else {
            (self.limits.max_frame_len, false)
        }
    }

    /// Check a message of at most `len` bytes against the frame limit. `peer` names the peer
    /// in the error, from the point of view of whoever reads it: "the peer's" for our caller,
    /// "the caller's" for the peer that made the call an answer is for.
    fn frame_fits(&self, len: usize, peer: &str) -> Result<(), Fault> {
        let (max, theirs) = self.send_frame_limit();
        if len > max {
            let whose = if theirs { peer } else { "the" };
            let mut message =
                format!("message of {len} bytes exceeds {whose} limit max_frame_len = {max}");
            if theirs && !self.peer_known {
                message.push_str(PEER_NOT_KNOWN);
            }
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message,
            });
        }
        Ok(())
    }

    /// Check the number of references in a message against the peer's limit (see
    /// [`Broker::frame_fits`] for `peer`).
    fn refs_fit(&self, refs: usize, peer: &str) -> Result<(), Fault> {
        let max = self.peer.max_refs_per_message;
        if refs > max {
            let mut message = format!(
                "message with {refs} references exceeds {peer} limit max_refs_per_message = {max}"
            );
            if !self.peer_known {
                message.push_str(PEER_NOT_KNOWN);
            }
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message,
            });
        }
        Ok(())
    }

    // ---- references --------------------------------------------------------------------

    /// Turn references about to be sent into wire descriptors, counting exports. Also returns
    /// the updates that must follow the message (caches that changed since they were encoded).
    fn describe(&mut self, refs: &[ObjectRef]) -> Result<Described, Fault> {
        if refs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // Check the quota before touching any count, so a refused message changes nothing.
        let new_exports = self.count_new_exports(refs);
        if self.exports.len() + new_exports > self.limits.max_exports {
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message: format!(
                    "exporting {new_exports} more objects would exceed the limit max_exports = {}",
                    self.limits.max_exports
                ),
            });
        }
        let mut descs = Vec::with_capacity(refs.len());
        let mut follow = Vec::new();
        for r in refs {
            if let Some(id) = self.is_ours_to_return(r) {
                descs.push(RefDesc::Receiver(id));
                continue;
            }
            let Some(key) = export_key(r) else { continue };
            if Some(key) == self.root_key {
                descs.push(RefDesc::Sender(0));
            } else if let Some(&id) = self.export_keys.get(&key) {
                if let Some(e) = self.exports.get_mut(&id) {
                    e.count += 1;
                }
                descs.push(RefDesc::Sender(id));
                if let RefInner::Local(d) = &r.0
                    && let Some(update) = d.on_resend(self.conn_id)
                {
                    follow.push(Follow::Update(id, update));
                }
            } else {
                let id = self.next_export;
                self.next_export += 1;
                self.exports.insert(
                    id,
                    Export {
                        object: r.clone(),
                        count: 1,
                    },
                );
                self.export_keys.insert(key, id);
                descs.push(RefDesc::Sender(id));
                match &r.0 {
                    RefInner::Local(d) => {
                        let link = ExportLink {
                            conn: self.link.clone(),
                            connection: self.conn_id,
                            object: id,
                        };
                        if let Some(update) = d.on_export(&link) {
                            follow.push(Follow::Update(id, update));
                        }
                    }
                    RefInner::Remote(imp) => {
                        // A forward: if the object dies, the peer must hear of it.
                        imp.dependents
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((self.link.clone(), id));
                        if imp.is_dead() {
                            follow.push(Follow::Revoke(id));
                        }
                    }
                }
            }
        }
        Ok((descs, follow))
    }

    /// How many distinct objects in `refs` are not exported yet.
    fn count_new_exports(&self, refs: &[ObjectRef]) -> usize {
        let new_key = |r: &ObjectRef| {
            if self.is_ours_to_return(r).is_some() {
                return None;
            }
            export_key(r)
                .filter(|&key| Some(key) != self.root_key && !self.export_keys.contains_key(&key))
        };
        // Most messages carry one or two references: no set to allocate for those.
        if refs.len() <= 8 {
            let keys = refs.iter().map(&new_key);
            let mut seen = [None; 8];
            let mut count = 0;
            for key in keys.flatten() {
                if !seen[..count].contains(&Some(key)) {
                    seen[count] = Some(key);
                    count += 1;
                }
            }
            return count;
        }
        refs.iter()
            .filter_map(new_key)
            .collect::<std::collections::HashSet<usize>>()
            .len()
    }

    /// Write what must follow a message.
    fn write_updates(&mut self, follow: Vec<Follow>) {
        for f in follow {
            match f {
                Follow::Update(object, payload) => {
                    let start = self.out.begin_frame();
                    encode_update_head(self.out.buf(), object);
                    self.out.push_payload(start, payload);
                }
                Follow::Revoke(object) => {
                    let held = self.revoke_export(object);
                    self.graveyard.extend(held);
                }
            }
        }
    }

    /// Withdraw an export from the peer: it forwards to an object that is gone. Returns the
    /// object, for the caller to drop outside the lock.
    pub(crate) fn revoke_export(&mut self, object: u64) -> Option<ObjectRef> {
        if self.state == State::Closed {
            return None;
        }
        let e = self.exports.remove(&object)?;
        if let Some(key) = export_key(&e.object) {
            self.export_keys.remove(&key);
        }
        self.write_message(&Message::Revoked { object });
        Some(e.object)
    }

    /// References the peer revoked, to be marked dead outside the lock.
    pub(crate) fn take_revoked(&mut self) -> Vec<Arc<Imported>> {
        std::mem::take(&mut self.revoked)
    }

    /// Keep objects to be dropped once the lock is released: dropping one may run user code
    /// (its `Drop`) that uses this very connection.
    fn bury(&mut self, refs: impl IntoIterator<Item = ObjectRef>) {
        self.graveyard.extend(refs);
    }

    /// The objects to drop now that the lock is being released.
    pub(crate) fn take_graveyard(&mut self) -> Vec<ObjectRef> {
        std::mem::take(&mut self.graveyard)
    }

    /// Queue a cache update for the peer; false if the object is no longer exported to it.
    pub(crate) fn send_update(&mut self, object: u64, payload: Bytes) -> bool {
        if self.state == State::Closed || !self.exports.contains_key(&object) {
            return false;
        }
        self.write_updates(vec![Follow::Update(object, payload)]);
        true
    }

    /// A reference that points at the peer's own object on this connection goes back by id.
    fn is_ours_to_return(&self, r: &ObjectRef) -> Option<u64> {
        match &r.0 {
            RefInner::Remote(imp) if imp.conn.id() == self.conn_id => Some(imp.id),
            _ => None,
        }
    }

    /// Turn received descriptors into references. Every descriptor is resolved even after an
    /// error, because the peer counted each of its objects as sent; dropping the result releases
    /// them again.
    fn resolve(
        &mut self,
        descs: &[RefDesc],
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> (Vec<ObjectRef>, Option<String>) {
        let mut refs = Vec::with_capacity(descs.len());
        let mut error = None;
        for d in descs {
            match *d {
                RefDesc::Sender(0) => refs.push(ObjectRef(RefInner::Remote(make(0, 0)))),
                RefDesc::Sender(id) => {
                    // One lookup: the slot is reused, filled, or replaced if its handle died.
                    let slot = self.imports.entry(id);
                    let existing = match &slot {
                        Entry::Occupied(s) => s.get().handle.upgrade(),
                        Entry::Vacant(_) => None,
                    };
                    let handle = match existing {
                        Some(h) => {
                            h.add_received();
                            h
                        }
                        None => {
                            let generation = self.next_generation;
                            self.next_generation += 1;
                            let h = make(id, generation);
                            let fresh = ImportSlot {
                                handle: Arc::downgrade(&h),
                                generation,
                            };
                            slot.insert_entry(fresh);
                            h
                        }
                    };
                    refs.push(ObjectRef(RefInner::Remote(handle)));
                }
                RefDesc::Receiver(0) => match &self.root {
                    Some(root) => refs.push(root.clone()),
                    None => error = Some("the peer returned our root, but we serve none".into()),
                },
                RefDesc::Receiver(id) => match self.exports.get(&id) {
                    Some(e) => refs.push(e.object.clone()),
                    None => {
                        error = Some(format!(
                            "the peer returned object {id}, which we never exported"
                        ))
                    }
                },
            }
        }
        (refs, error)
    }

    /// Our last handle to an imported reference was dropped: tell the owner.
    pub(crate) fn release_imported(&mut self, id: u64, generation: u64, count: u64) {
        if let Entry::Occupied(s) = self.imports.entry(id)
            && s.get().generation == generation
        {
            s.remove();
        }
        if self.state != State::Closed && count > 0 {
            self.releases.push((id, count));
        }
    }

    fn violation(&mut self) -> Result<(), ProtocolError> {
        self.violations += 1;
        if self.violations > self.limits.max_violations {
            return Err(ProtocolError::TooManyViolations {
                count: self.violations,
                max: self.limits.max_violations,
            });
        }
        Ok(())
    }

    // ---- input -------------------------------------------------------------------------

    /// Handle one frame body from the peer: a call to run comes back (a frame holds at most
    /// one).
    pub(crate) fn handle_frame(
        &mut self,
        body: Bytes,
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> Result<Option<CallEvent>, ProtocolError> {
        if self.state == State::Closed {
            return Ok(None);
        }
        if message::is_call(&body) {
            // The body is kept whole: the method name and arguments stay ranges of it.
            let head = message::decode_call_head(&body, &self.limits.message)?;
            return self.handle_call(head, body, make);
        }
        let message = Message::decode(body, &self.limits.message)?;
        self.handle_message(message, make).map(|()| None)
    }

    /// Handle a message that is not a call.
    fn handle_message(
        &mut self,
        message: Message,
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> Result<(), ProtocolError> {
        match message {
            // `handle_frame` runs calls.
            Message::Call { .. } => Ok(()),
            Message::Answer {
                id,
                ok,
                refs,
                payload,
            } => {
                let (refs, error) = self.resolve(&refs, make);
                let over = self.imports.len() > self.limits.max_imports;
                let reply = if let Some(message) = error {
                    Err(Fault {
                        kind: FaultKind::BadAnswer,
                        message,
                    })
                } else if over {
                    Err(self.imports_over_limit())
                } else {
                    Ok(Outcome { ok, payload, refs })
                };
                if let Err(unwanted) = self.deliver(id, reply) {
                    tracing::debug!(id, "answer for a call no longer pending");
                    if let Ok(o) = unwanted {
                        self.bury(o.refs);
                    }
                    return Ok(());
                }
                if over { self.violation() } else { Ok(()) }
            }
            Message::Fault { id, kind, message } => {
                if self.deliver(id, Err(Fault { kind, message })).is_err() {
                    tracing::debug!(id, "fault for a call no longer pending");
                }
                Ok(())
            }
            Message::Release(items) => {
                for (id, count) in items {
                    if id == 0 {
                        continue;
                    }
                    let Some(e) = self.exports.get_mut(&id) else {
                        tracing::warn!(id, "peer released an object we do not export");
                        self.violation()?;
                        continue;
                    };
                    if count > e.count {
                        tracing::warn!(
                            id,
                            count,
                            held = e.count,
                            "peer released more than it was sent"
                        );
                    }
                    e.count = e.count.saturating_sub(count);
                    if e.count == 0
                        && let Some(e) = self.exports.remove(&id)
                    {
                        // Dropped outside the lock: the object's `Drop` may use this connection.
                        self.graveyard.push(e.object.clone());
                        if let Some(key) = export_key(&e.object) {
                            self.export_keys.remove(&key);
                        }
                        match &e.object.0 {
                            RefInner::Local(d) => d.on_unexport(self.conn_id),
                            RefInner::Remote(imp) => imp
                                .dependents
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .retain(|(c, object)| !(*object == id && c.ptr_eq(&self.link))),
                        }
                    }
                }
                Ok(())
            }
            Message::Cancel { id } => {
                // Dropping the sender wakes the handler's cancellation branch.
                self.running.remove(&id);
                Ok(())
            }
            Message::Goodbye => {
                self.peer_goodbye = true;
                Ok(())
            }
            Message::Revoked { object } => {
                // The peer freed the object already: our handles must not release it again.
                if let Some(slot) = self.imports.remove(&object)
                    && let Some(imp) = slot.handle.upgrade()
                {
                    imp.forget_count();
                    self.revoked.push(imp);
                }
                Ok(())
            }
            Message::Ping { nonce } => {
                self.write_message(&Message::Pong { nonce });
                Ok(())
            }
            // The driver notes that a frame arrived; nothing else to do.
            Message::Pong { .. } => Ok(()),
            Message::Limits(limits) => {
                tracing::debug!(?limits, "the peer's receive limits changed");
                self.peer = limits;
                Ok(())
            }
            Message::Update { object, payload } => {
                match self.imports.get(&object).and_then(|s| s.handle.upgrade()) {
                    Some(imp) => imp
                        .replica
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .deliver(payload),
                    // No loss: a later send of the cache carries a newer state, followed by
                    // the updates made since it was encoded (`Dispatch::on_resend`).
                    None => tracing::debug!(object, "update for a reference no longer held"),
                }
                Ok(())
            }
        }
    }

    fn imports_over_limit(&self) -> Fault {
        Fault {
            kind: FaultKind::LimitExceeded,
            message: format!(
                "references from the peer exceed the limit max_imports = {}",
                self.limits.max_imports
            ),
        }
    }

    fn handle_call(
        &mut self,
        head: CallHead,
        body: Bytes,
        make: &dyn Fn(u64, u64) -> Arc<Imported>,
    ) -> Result<Option<CallEvent>, ProtocolError> {
        let CallHead {
            id,
            target,
            answer,
            deadline_ms,
            method,
            refs: descs,
            payload_at,
        } = head;
        let (refs, error) = self.resolve(&descs, make);
        let mut violated = false;
        let refused = if self.state != State::Open {
            Some((
                FaultKind::ShuttingDown,
                "the peer is shutting down".to_string(),
            ))
        } else if let Some(message) = error {
            Some((FaultKind::NoSuchObject, message))
        } else if self.imports.len() > self.limits.max_imports {
            violated = true;
            let f = self.imports_over_limit();
            Some((f.kind, f.message))
        } else if self.in_flight >= self.limits.max_in_flight_calls {
            violated = true;
            Some((
                FaultKind::LimitExceeded,
                format!(
                    "too many calls in flight (limit max_in_flight_calls = {})",
                    self.limits.max_in_flight_calls
                ),
            ))
        } else if answer && self.running.contains_key(&id) {
            return Err(ProtocolError::DuplicateRequest(id));
        } else {
            None
        };
        let object = if refused.is_some() {
            None
        } else if target == 0 {
            self.root.clone()
        } else {
            self.exports.get(&target).map(|e| e.object.clone())
        };
        let refused = refused.or_else(|| {
            object
                .is_none()
                .then(|| (FaultKind::NoSuchObject, format!("no object {target}")))
        });
        if let Some((kind, message)) = refused {
            tracing::debug!(id, target, %message, "call refused");
            self.bury(refs);
            if answer {
                self.send_fault(id, kind, message);
            }
            return if violated {
                self.violation().map(|()| None)
            } else {
                Ok(None)
            };
        }
        let Some(object) = object else {
            return Ok(None);
        };
        // Entered in the running table only if the handler has to wait (`watch_cancel`): most
        // calls are answered before the next frame is handled.
        self.in_flight += 1;
        Ok(Some(CallEvent {
            id,
            target,
            object,
            body,
            method,
            args_at: payload_at,
            refs,
            answer,
            deadline: deadline_ms.map(std::time::Duration::from_millis),
        }))
    }

    /// Start a call to the peer's object `target`. With a waker, an answer is wanted: it is
    /// kept in the pending table for [`Broker::poll_answer`], and the waker woken when it
    /// arrives.
    pub(crate) fn start_call(
        &mut self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: &[ObjectRef],
        (waker, deadline_ms): (Option<Waker>, Option<u64>),
    ) -> Result<u64, Fault> {
        if self.state == State::Closed {
            return Err(self.close_fault.clone().unwrap_or_else(disconnected_fault));
        }
        if self.peer_goodbye || self.state == State::Draining {
            return Err(Fault {
                kind: FaultKind::ShuttingDown,
                message: "the connection is shutting down".into(),
            });
        }
        if method.len() > message::MAX_METHOD_LEN {
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message: format!("method name longer than {} bytes", message::MAX_METHOD_LEN),
            });
        }
        if waker.is_some() && self.pending.len() >= self.limits.max_pending_calls {
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message: format!(
                    "too many calls awaiting answers (limit max_pending_calls = {})",
                    self.limits.max_pending_calls
                ),
            });
        }
        // Checked before anything is exported: a refused call changes no count.
        self.refs_fit(refs.len(), PEER)?;
        self.frame_fits(
            call_len_max(method.len(), payload.as_slice().len(), refs.len()),
            PEER,
        )?;
        let (descs, follow) = self.describe(refs)?;
        let id = self.next_request;
        self.next_request += 1;
        self.reserve_frame(24 + method.len() + descs.len() * 11, payload.as_slice());
        encode_call_frame_head(
            self.out.buf(),
            payload.as_slice().len(),
            id,
            target,
            method.as_bytes(),
            (waker.is_some(), deadline_ms),
            &descs,
        );
        match payload {
            // Copied straight from the scratch buffer: no allocation of its own.
            Payload::Encoded(e) if e.as_slice().len() < ZERO_COPY_MIN => {
                self.out.buf().put_slice(e.as_slice());
            }
            payload => self.out.append_payload(payload.into_bytes()),
        }
        if !follow.is_empty() {
            self.write_updates(follow);
        }
        if let Some(w) = waker {
            self.pending.insert(id, PendingCall::Waiting(Some(w)));
        }
        Ok(id)
    }

    /// Who should write the call a caller just queued: the caller itself when it is the only
    /// call awaiting an answer (a sequential caller: writing at once saves the hop through the
    /// writer task). With other calls pending, more calls are likely on their way in the same
    /// scheduler tick (callers woken by one batch of answers, or a task starting several), and
    /// the writer task, which runs after them, writes them all at once. During a reader's
    /// batch, the reader flushes when the batch is done.
    pub(crate) fn who_flushes(&self) -> Flush {
        if self.in_batch {
            Flush::Reader
        } else if self.pending.len() <= 1 {
            Flush::Caller
        } else {
            Flush::Writer
        }
    }

    /// Hand the answer of call `id` to its caller. `Err` gives the reply back if the call is
    /// not waiting (cancelled, already answered, or never made).
    fn deliver(&mut self, id: u64, reply: Reply) -> Result<(), Reply> {
        let Some(slot) = self.pending.get_mut(&id) else {
            return Err(reply);
        };
        let PendingCall::Waiting(waker) = slot else {
            return Err(reply);
        };
        if let Some(w) = waker.take() {
            self.wakers.push(w);
        }
        *slot = PendingCall::Answered(reply);
        Ok(())
    }

    /// What a call fails with once the connection is closed.
    fn close_fault(&self) -> Fault {
        self.close_fault.clone().unwrap_or_else(disconnected_fault)
    }

    /// The caller of call `id` polls for its answer: `Ready` takes it out of the table,
    /// `Pending` keeps `waker` to be woken when it arrives. A call no longer in the table was
    /// failed by the connection's end.
    pub(crate) fn poll_answer(&mut self, id: u64, waker: &Waker) -> Poll<Reply> {
        // One lookup whether the answer is there or not.
        let mut slot = match self.pending.entry(id) {
            Entry::Occupied(slot) => slot,
            Entry::Vacant(_) => return Poll::Ready(Err(self.close_fault())),
        };
        if let PendingCall::Waiting(w) = slot.get_mut() {
            match w {
                Some(w) if w.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
            return Poll::Pending;
        }
        match slot.remove() {
            PendingCall::Answered(reply) => Poll::Ready(reply),
            PendingCall::Waiting(_) => Poll::Ready(Err(self.close_fault())),
        }
    }

    /// Move the wakers of callers whose answers arrived into `into`, to be woken once the lock
    /// is released.
    pub(crate) fn take_wakers(&mut self, into: &mut Vec<Waker>) {
        if into.is_empty() {
            std::mem::swap(into, &mut self.wakers);
        } else {
            into.append(&mut self.wakers);
        }
    }

    /// Enter call `id`, whose handler has to wait, in the running table: the receiver fires
    /// (or is dropped) when the peer cancels it. `None` once the connection is closed. Made
    /// only for handlers that wait, so a call answered at once costs no channel and no entry.
    pub(crate) fn watch_cancel(&mut self, id: u64) -> Option<oneshot::Receiver<()>> {
        if self.state == State::Closed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.running.insert(id, Some(tx));
        Some(rx)
    }

    /// Our caller gave up on call `id`. Returns its answer if one had arrived meanwhile, for
    /// the caller to drop outside the lock (it may hold references).
    pub(crate) fn cancel_call(&mut self, id: u64) -> Option<Reply> {
        match self.pending.remove(&id)? {
            PendingCall::Waiting(_) => {
                if self.state != State::Closed {
                    self.write_message(&Message::Cancel { id });
                }
                None
            }
            PendingCall::Answered(reply) => Some(reply),
        }
    }

    /// An incoming call finished: send its reply unless it was cancelled or wanted none.
    ///
    /// `tracked`: the call was entered in the running table (by [`Broker::watch_cancel`]) and
    /// is answered only if still there; a call answered inline, before any other frame was
    /// handled, was never entered and cannot have been cancelled.
    pub(crate) fn finish_call(
        &mut self,
        id: u64,
        answer: bool,
        reply: Option<Reply>,
        tracked: bool,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if !answer || self.state == State::Closed || (tracked && self.running.remove(&id).is_none())
        {
            return;
        }
        let reply = match reply {
            None => return,
            // Most answers carry no references: no export bookkeeping, nothing to follow, and
            // the frame's length goes out with the envelope.
            Some(Ok(o)) if o.refs.is_empty() => {
                match self.frame_fits(ANSWER_HEAD_MAX + o.payload.len(), CALLER) {
                    Ok(()) => {
                        self.reserve_frame(16, &o.payload);
                        encode_answer_frame_head(self.out.buf(), id, o.ok, o.payload.len());
                        self.out.append_payload(o.payload);
                    }
                    Err(f) => self.send_fault(id, f.kind, f.message),
                }
                return;
            }
            Some(reply) => reply,
        };
        let outcome = reply.and_then(|o| {
            // Checked before anything is exported: a refused answer changes no count.
            let len = ANSWER_HEAD_MAX + o.refs.len() * REF_DESC_MAX + o.payload.len();
            let described = self
                .refs_fit(o.refs.len(), CALLER)
                .and_then(|()| self.frame_fits(len, CALLER))
                .and_then(|()| self.describe(&o.refs));
            // The references are exported now (or refused): ours to drop, outside the lock.
            self.bury(o.refs);
            let (descs, follow) = described?;
            Ok((o.ok, descs, follow, o.payload))
        });
        match outcome {
            Ok((ok, descs, follow, payload)) => {
                self.reserve_frame(16 + descs.len() * 11, &payload);
                let start = self.out.begin_frame();
                encode_answer_head(self.out.buf(), id, ok, &descs);
                self.out.push_payload(start, payload);
                self.write_updates(follow);
            }
            Err(f) => self.send_fault(id, f.kind, f.message),
        }
    }

    /// Ask the peer for a sign of life (keep-alive).
    pub(crate) fn send_ping(&mut self, nonce: u64) {
        if self.state != State::Closed {
            self.write_message(&Message::Ping { nonce });
        }
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
    pub(crate) fn close(&mut self, fault: Fault) -> (Vec<ObjectRef>, Vec<Arc<Imported>>) {
        self.state = State::Closed;
        let imports: Vec<Arc<Imported>> = self
            .imports
            .drain()
            .filter_map(|(_, s)| s.handle.upgrade())
            .collect();
        // Every caller still waiting finds its call gone, which fails it with `fault` (kept in
        // `close_fault`);
        // answers that arrived before the end stay for their callers to take.
        let wakers = &mut self.wakers;
        self.pending.retain(|_, call| match call {
            PendingCall::Waiting(waker) => {
                wakers.extend(waker.take());
                false
            }
            PendingCall::Answered(_) => true,
        });
        self.running.clear();
        self.imports.clear();
        self.export_keys.clear();
        self.releases.clear();
        self.close_fault = Some(fault);
        let mut held: Vec<ObjectRef> = self.exports.drain().map(|(_, e)| e.object).collect();
        for object in &held {
            if let RefInner::Local(d) = &object.0 {
                d.on_unexport(self.conn_id);
            }
        }
        held.extend(self.root.take());
        held.append(&mut self.graveyard);
        self.root_key = None;
        (held, imports)
    }
}

/// The peer, in an error our caller reads.
const PEER: &str = "the peer's";

/// The peer, in an error the peer reads about the answer to its call.
const CALLER: &str = "the caller's";

/// Said of a limit that is the floor because the peer's hello has not arrived yet.
const PEER_NOT_KNOWN: &str =
    " (the floor every peer accepts: the peer's own limits are not known before its hello)";

/// The largest a call's frame body can be, whatever its ids and references.
fn call_len_max(method_len: usize, payload_len: usize, refs: usize) -> usize {
    CALL_HEAD_MAX + method_len + refs * REF_DESC_MAX + payload_len
}

/// The most entries a release list keeps room for between batches (16 KiB or 24 KiB).
pub(crate) const KEEP_RELEASES: usize = 1024;

/// The key an object is exported under: the address of its shared allocation.
fn export_key(r: &ObjectRef) -> Option<usize> {
    match &r.0 {
        RefInner::Local(_) => r.local_key(),
        RefInner::Remote(imp) => Some(Arc::as_ptr(imp) as usize),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_peer_without_limits_is_assumed_to_have_the_defaults() {
        use crate::handshake::ReceiveLimits;
        assert_eq!(super::Limits::default().receive(), ReceiveLimits::ASSUMED);
        let low = super::Limits {
            max_frame_len: 1,
            message: crate::message::MessageLimits {
                max_refs_per_message: 0,
                max_release_entries: 0,
            },
            ..super::Limits::default()
        };
        assert_eq!(low.receive(), ReceiveLimits::FLOOR);
        assert_eq!(
            low.enforced().max_frame_len,
            ReceiveLimits::FLOOR.max_frame_len
        );
        let high = super::Limits {
            max_frame_len: usize::MAX,
            ..super::Limits::default()
        };
        assert_eq!(
            high.receive().max_frame_len,
            crate::frame::MAX_FRAME_LEN_CEILING
        );
    }
}
