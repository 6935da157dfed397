//! The object model's view of a connection: what a remote reference, a handler's [`Caller`]
//! and an exported object's hooks need of the connection they live on ([`Link`]), the handle
//! of an imported reference ([`Imported`]), and the public [`Connection`] handle.
//!
//! The object model names no type of the driver: the driver (`connection/`) implements
//! [`Link`] and hands the object model an `Arc<dyn Link>`. Arrows go from the driver to the
//! object model, never back.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::codec::Payload;
use crate::codec::jelly::JellyRefs;
use crate::handshake::HandshakeError;
use crate::object::{Fault, ObjectRef, Received, Remote};
use pb_proto::banana::BananaCodec;
use pb_proto::jelly::JellyConfig;
use pb_proto::limits::TableStats;
use pb_proto::message::CallExtras;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a new connection, whatever protocol it speaks (references compare
/// by connection id).
pub(crate) fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// A future borrowed from a link.
pub(crate) type LinkFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which end of a connection we are. The protocol is symmetric after the handshake; the side
/// only matters for logging and for who sends the first byte of a TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// We dialed.
    Client,
    /// We accepted.
    Server,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Closed on purpose by this side.
    Local,
    /// The peer closed the connection.
    PeerClosed,
    /// The transport failed.
    Io(String),
    /// The peer broke the protocol.
    Protocol(String),
    /// No complete frame came from the peer for the configured `idle_timeout` (or, on a
    /// connection made with [`Connection::dial`], no hello within `handshake_timeout`).
    IdleTimeout(std::time::Duration),
    /// The peer's hello was refused (on a connection made with [`Connection::dial`], which
    /// checks it after returning): it speaks another protocol version, or not pb at all.
    Handshake(HandshakeError),
    /// Output was over `Limits::max_unsent_bytes` and none of it could be written for the
    /// configured `write_stall_timeout`: the peer stopped reading.
    WriteStalled(std::time::Duration),
    /// A cache this side owns could not be kept up to date on the peer, which observes it: an
    /// update, and the cache's whole state after it, were over the peer's `max_frame_len`, or
    /// updates waited unsent past [`UPDATE_BACKLOG`] times `Limits::max_unsent_bytes` (the
    /// peer reads too slowly to follow them). Cut, the peer's replicas fail with
    /// `Disconnected` rather than go silently stale, and its backlog costs nothing more.
    CacheBehind(String),
}

/// How many times `Limits::max_unsent_bytes` of output may wait for a peer that observes a
/// cache before a new update cuts it ([`CloseReason::CacheBehind`]).
pub const UPDATE_BACKLOG: usize = 4;

/// A live counter snapshot of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    /// Table sizes.
    pub tables: TableStats,
    /// Bytes received, frames and headers included.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes queued for the peer and not yet written.
    pub unsent_bytes: u64,
}

/// What the application recorded of a peer: identities (one per type) and the avatar it
/// logged in as. Kept by the driver for its connection, read and written only here, and let
/// go of when the connection closes ([`PeerRecord::forget`]): what it holds may hold the
/// connection (an avatar that keeps the client's mind, a remote reference, whose handle holds
/// the connection), and would otherwise keep it, and itself, alive for ever.
#[derive(Default)]
pub(crate) struct PeerRecord(Mutex<Recorded>);

#[derive(Default)]
struct Recorded {
    identities: Vec<Arc<dyn Any + Send + Sync>>,
    avatar: Option<ObjectRef>,
    /// The connection has closed: nothing but pb's `Identity` is recorded any more.
    forgotten: bool,
}

impl PeerRecord {
    /// The connection has closed: let go of the avatar and of every identity but pb's own
    /// [`Identity`](crate::identity::Identity) (plain data, which holds nothing, and still
    /// tells code that runs after the close who the peer was), and record nothing more.
    pub(crate) fn forget(&self) {
        let (identities, avatar) = {
            let mut record = lock(&self.0);
            record.forgotten = true;
            let (pb, other): (Vec<_>, Vec<_>) = std::mem::take(&mut record.identities)
                .into_iter()
                .partition(|id| id.is::<crate::identity::Identity>());
            record.identities = pb;
            (other, record.avatar.take())
        };
        // Dropped outside the lock: their drops may run user code, which may read the record.
        drop((identities, avatar));
    }
}

/// The most updates buffered for a replica that is still being decoded.
pub(crate) const MAX_BUFFERED_UPDATES: usize = 4096;

/// The bytes of updates one connection buffers for replicas not decoded yet, against a cap
/// for all of them (the connection's call window: what its running calls may hold) and one
/// for each (one frame: the largest update the connection takes).
#[derive(Debug)]
pub(crate) struct UpdateBudget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
    per_replica: usize,
}

impl UpdateBudget {
    pub(crate) fn new(max: usize, per_replica: usize) -> Arc<UpdateBudget> {
        Arc::new(UpdateBudget {
            used: std::sync::atomic::AtomicUsize::new(0),
            max,
            per_replica,
        })
    }

    /// The budget of a connection that takes `limits` (see [`UpdateBudget`]).
    pub(crate) fn of(limits: &pb_proto::limits::Limits) -> Arc<UpdateBudget> {
        let limits = limits.enforced();
        UpdateBudget::new(
            limits.max_call_bytes.max(limits.max_frame_len),
            limits.max_frame_len,
        )
    }

    /// The bytes buffered now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Take `n` more bytes, if they fit.
    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.max).then_some(used + n)
            })
            .is_ok()
    }
}

/// Bytes a replica's buffer holds of its connection's [`UpdateBudget`], given back when the
/// buffer goes (the replica decoded, or its handle dropped).
#[derive(Debug)]
pub(crate) struct BudgetCharge {
    budget: Arc<UpdateBudget>,
    pub(crate) bytes: usize,
}

impl Drop for BudgetCharge {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Receives updates for a replica.
pub(crate) trait ReplicaSink: Send + Sync {
    fn apply(&self, payload: &[u8]);
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// Where updates for an imported object go, if it turns out to be a cache. It lives in the
/// imported handle, so the replica's state lives as long as the handle, not only as long as
/// the `Replica` clones (see `cache`): an answer that sends the cache again may hold the handle while the
/// last clone is dropped, and the replica it decodes to must not have missed what arrived
/// meanwhile.
///
/// ```text
/// Unattached ─update─▶ Buffered ─replica decoded (buffered updates applied)─▶ Attached
///      └────────────────────────────replica decoded──────────────────────────────┘
/// ```
#[derive(Default)]
pub(crate) enum ReplicaSlot {
    /// No update has arrived and no replica exists.
    #[default]
    Unattached,
    /// Updates that arrived before the replica was decoded (`charge.bytes` of them, held of
    /// the connection's budget); `overflowed`: some were dropped.
    Buffered {
        pending: Vec<Bytes>,
        charge: BudgetCharge,
        overflowed: bool,
    },
    /// The replica's state.
    Attached(Arc<dyn ReplicaSink>),
}

impl ReplicaSlot {
    /// An update arrived: applied to the replica, or, before it is decoded, buffered within
    /// the replica's own limits and its connection's `budget`.
    pub(crate) fn deliver(&mut self, payload: Bytes, budget: &Arc<UpdateBudget>) {
        match self {
            ReplicaSlot::Attached(sink) => sink.apply(&payload),
            ReplicaSlot::Unattached => {
                *self = ReplicaSlot::Buffered {
                    pending: Vec::new(),
                    charge: BudgetCharge {
                        budget: budget.clone(),
                        bytes: 0,
                    },
                    overflowed: false,
                };
                self.deliver(payload, budget);
            }
            ReplicaSlot::Buffered {
                pending,
                charge,
                overflowed,
            } => {
                if !*overflowed
                    && pending.len() < MAX_BUFFERED_UPDATES
                    && charge.bytes + payload.len() <= charge.budget.per_replica
                    && charge.budget.take(payload.len())
                {
                    charge.bytes += payload.len();
                    // Copied: the payload is a slice of the frame it came in, and would keep
                    // that whole read buffer alive for as long as it waits, far more than the
                    // bytes counted here.
                    pending.push(Bytes::copy_from_slice(&payload));
                } else if !*overflowed {
                    // The replica will be told when it is decoded (`TooManyBuffered`); what
                    // follows a dropped update is of no use to it.
                    *overflowed = true;
                    tracing::error!(
                        max = MAX_BUFFERED_UPDATES,
                        max_bytes = charge.budget.per_replica,
                        connection_bytes = charge.budget.used(),
                        "dropping cache updates: too many before the replica was decoded"
                    );
                }
            }
        }
    }
}

/// What the object model needs of a connection; the driver implements it.
pub(crate) trait Link: Send + Sync + 'static {
    /// A process-unique id of the connection.
    fn id(&self) -> u64;
    /// Which side we are.
    fn side(&self) -> Side;
    /// The peer's address, when the transport has one.
    fn peer_addr(&self) -> Option<SocketAddr>;
    /// The nesting-depth limit for values decoded from this connection.
    fn max_depth(&self) -> usize;
    /// What the application recorded of the peer.
    fn record(&self) -> &PeerRecord;
    /// `None` when a call of this size may be started now; otherwise what to wait for first
    /// (room in a congested output, or the peer's limits for a call over the floor every peer
    /// accepts, on a dialed connection whose peer's hello has not arrived).
    fn wait_to_call(
        &self,
        method_len: usize,
        payload_len: usize,
        refs: usize,
    ) -> Option<LinkFuture<'_, ()>>;
    /// Start our call of `method` on the peer's object `target`, whose answer wakes the waker,
    /// bound by the deadline, carrying the extras; returns its request id, or why it was not
    /// sent.
    fn start_call(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
        how: (Waker, Option<tokio::time::Instant>, CallExtras),
    ) -> Result<u64, Fault>;
    /// The answer to our call `id`, once it has arrived.
    fn poll_answer(&self, id: u64, cx: &mut Context<'_>) -> Poll<Received>;
    /// We no longer want the answer to our call `id`: cancel it on the peer.
    fn cancel_call(&self, id: u64);
    /// Send a call that wants no answer.
    fn send_oneway(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
        extras: CallExtras,
    ) -> Result<(), Fault>;
    /// Send a cache update to the peer, if our object `object` is still exported to it.
    fn send_update(&self, object: u64, payload: Bytes, state: &dyn Fn() -> Option<Bytes>);
    /// Whether our object is exported to the peer under `object`.
    fn is_exported(&self, object: u64) -> bool;
    /// The peer's object `id` (of `generation`) was received `count` times and is no longer
    /// held: tell the peer. Must not take the connection's locks (it runs on any drop).
    fn queue_release(&self, id: u64, generation: u64, count: u64);
    /// Withdraw export `object` from the peer (it forwarded to something now unreachable).
    fn revoke_export(&self, object: u64);
    /// The peer's root object.
    fn peer_root(self: Arc<Self>) -> ObjectRef;
    /// Replace the object we serve as our root; returns the previous one.
    fn set_root(&self, root: Option<ObjectRef>) -> Option<ObjectRef>;
    /// The connection's live counters.
    fn stats(&self) -> ConnectionStats;
    /// Change the largest frame accepted and sent (see [`Connection::set_max_frame_len`]).
    fn set_max_frame_len(&self, len: usize);
    /// What the peer's decoder accepts, as it last said (`None` where the dialect has no
    /// such limits).
    fn peer_limits(&self) -> Option<crate::handshake::ReceiveLimits>;
    /// What our decoder accepts from the peer (`None` where the dialect has no such limits).
    fn own_limits(&self) -> Option<crate::handshake::ReceiveLimits>;
    /// Change the call window (see [`Connection::set_max_call_bytes`]).
    fn set_max_call_bytes(&self, bytes: usize);
    /// Whether the connection has ended.
    fn is_closed(&self) -> bool;
    /// Why the connection ended, once it has.
    fn close_reason(&self) -> Option<CloseReason>;
    /// What a call fails with once the connection has ended.
    fn close_fault(&self) -> Fault;
    /// Completes when the connection ends.
    fn closed(&self) -> LinkFuture<'_, ()>;
    /// Close gracefully (see [`Connection::close`]): `None` when the connection closed at
    /// once (nothing to wait for), otherwise the wait for its calls to drain, which then closes
    /// it.
    fn close(&self) -> Option<LinkFuture<'_, ()>>;
    /// Close at once.
    fn abort(&self);
    /// The connection's Twisted PB side, when it speaks the PB dialect (values are Jelly, not
    /// bincode).
    fn twisted(&self) -> Option<&dyn TwistedLink> {
        None
    }
}

/// What the object model needs of a connection that speaks Twisted PB: how a reference
/// becomes a flavor when it is sent, and the codec and limits values are encoded under.
pub(crate) trait TwistedLink: Send + Sync {
    /// Exports references (or sends them home) as they are met in a value being encoded.
    fn refs(&self) -> &dyn JellyRefs;
    /// The Banana codec of the connection's output (its dialect and limits).
    fn encoder(&self) -> BananaCodec;
    /// The Jelly limits of the connection.
    fn jelly_config(&self) -> JellyConfig;
    /// Sends our exported Cacheable `object`'s copy on the peer an `observe_<method>` call
    /// (a `cachemessage` asking no answer) with `args`, a tuple: the update that made the
    /// cache's `version`. Until a message carrying the Cacheable's state is queued, it waits,
    /// and goes after that message if the state it carries is older.
    fn send_observe(&self, object: u64, method: &str, args: &pb_proto::jelly::Graph, version: u64);
    /// Takes back sends of our objects, `(luid, cache)` each, counted while a value was
    /// jellied that then was not sent: the peer never heard of them.
    fn take_back(&self, sends: &[(i64, bool)]);
    /// A handle of this connection that a payload may keep, to take its sends back later
    /// (`None` once the connection is gone).
    fn owned(&self) -> Option<Arc<dyn TwistedLink>>;
}

/// A handle to an object the peer exported to us.
pub(crate) struct Imported {
    pub(crate) conn: Arc<dyn Link>,
    /// `conn.id()`, read where references are compared, hashed and sent.
    pub(crate) connection: u64,
    pub(crate) id: u64,
    pub(crate) generation: u64,
    received: AtomicU64,
    /// Where cache updates for this object go, if it is a cache.
    pub(crate) replica: Mutex<ReplicaSlot>,
    /// Set when the owner revoked the object, or when a connection it depends on was lost.
    dead: AtomicBool,
    /// Wakes `disconnected()` waiters when the object is revoked.
    revoked: Notify,
    /// Our exports to other peers that forward to this object: (connection, export id).
    pub(crate) dependents: Mutex<Vec<(Weak<dyn Link>, u64)>>,
}

/// Where an exported object lives: the connection and the id the peer knows it by.
#[doc(hidden)]
#[derive(Clone)]
pub struct ExportLink {
    pub(crate) conn: Weak<dyn Link>,
    pub(crate) connection: u64,
    pub(crate) object: u64,
}

impl Imported {
    /// The handle of `conn`'s object `id` of `generation`, received once (the root, id 0,
    /// is not counted: it is never released).
    pub(crate) fn new(conn: Arc<dyn Link>, id: u64, generation: u64) -> Imported {
        Imported {
            connection: conn.id(),
            conn,
            id,
            generation,
            received: AtomicU64::new(if id == 0 { 0 } else { 1 }),
            replica: Mutex::new(ReplicaSlot::default()),
            dead: AtomicBool::new(false),
            revoked: Notify::new(),
            dependents: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn add_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The fault of a call to the object once it is dead: it names a refused hello.
    pub(crate) fn dead_fault(&self) -> Fault {
        self.conn.close_fault()
    }

    /// Whether calls to the object can no longer succeed.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.conn.is_closed()
    }

    /// The owner withdrew the object: release nothing for it later.
    pub(crate) fn forget_count(&self) {
        self.received.store(0, Ordering::Relaxed);
    }

    /// Mark the object dead, wake its waiters, and revoke every forward of it that we export
    /// to other peers, which carries the failure on to them. Takes no lock of this connection.
    pub(crate) fn revoke(&self) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        self.revoked.notify_waiters();
        let dependents =
            std::mem::take(&mut *self.dependents.lock().unwrap_or_else(|p| p.into_inner()));
        for (conn, object) in dependents {
            if let Some(conn) = conn.upgrade() {
                conn.revoke_export(object);
            }
        }
    }

    /// Completes when the object is revoked or its connection is lost.
    pub(crate) async fn dead(&self) {
        loop {
            let revoked = self.revoked.notified();
            tokio::pin!(revoked);
            revoked.as_mut().enable();
            if self.is_dead() {
                return;
            }
            tokio::select! {
                _ = &mut revoked => {}
                _ = self.conn.closed() => return,
            }
        }
    }
}

impl Drop for Imported {
    fn drop(&mut self) {
        if self.id != 0 {
            let count = *self.received.get_mut();
            self.conn.queue_release(self.id, self.generation, count);
        }
    }
}

/// A pb connection: symmetric, either side may call objects the other gave it.
///
/// Cheap to clone. The connection stays open until [`Connection::close`] is called, the peer
/// closes it, or it fails; dropping the handles does not close it while the peer keeps it open.
#[derive(Clone)]
pub struct Connection {
    link: Arc<dyn Link>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.link.id())
            .field("side", &self.link.side())
            .field("peer_addr", &self.link.peer_addr())
            .finish()
    }
}

/// Locks `m`, taking over a lock poisoned by a panic (its data stays consistent: nothing
/// here panics half-way through a change).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// The handle of the connection `link` drives.
    pub(crate) fn new(link: Arc<dyn Link>) -> Connection {
        Connection { link }
    }

    /// The connection, held weakly: what keeps no part of it alive.
    pub(crate) fn downgrade(&self) -> Weak<dyn Link> {
        Arc::downgrade(&self.link)
    }

    /// The peer's root object, typed.
    pub fn root<R: Remote>(&self) -> R {
        R::from_object_ref(self.root_ref())
    }

    /// The peer's root object, untyped.
    pub fn root_ref(&self) -> ObjectRef {
        self.link.clone().peer_root()
    }

    /// The largest frame the peer accepts, as it last said (in its hello, or a limits message
    /// since; until a dialed connection's peer has said, what every peer accepts): a call or
    /// answer larger than this fails with `LimitExceeded` rather than being sent. `usize::MAX`
    /// over the Twisted PB dialect, whose limits are on each string and list instead.
    pub fn peer_max_frame_len(&self) -> usize {
        self.link
            .peer_limits()
            .map_or(usize::MAX, |l| l.max_frame_len)
    }

    /// The most references one message to the peer may carry, as it last said (`usize::MAX`
    /// over the Twisted PB dialect).
    pub(crate) fn peer_max_refs_per_message(&self) -> usize {
        self.link
            .peer_limits()
            .map_or(usize::MAX, |l| l.max_refs_per_message)
    }

    /// Replace the object we serve as our root; returns the previous one.
    pub fn set_root(&self, root: Option<ObjectRef>) -> Option<ObjectRef> {
        self.link.set_root(root)
    }

    /// The connection's Twisted PB side, when it speaks the PB dialect.
    pub(crate) fn twisted(&self) -> Option<&dyn TwistedLink> {
        self.link.twisted()
    }

    /// Whether the connection speaks Twisted PB (the PB dialect) rather than pb's own
    /// protocol.
    pub fn is_twisted(&self) -> bool {
        self.link.twisted().is_some()
    }

    /// The nesting-depth limit for values decoded from this connection.
    pub(crate) fn max_depth(&self) -> usize {
        self.link.max_depth()
    }

    /// A process-unique id of this connection.
    pub fn id(&self) -> u64 {
        self.link.id()
    }

    /// Which side we are.
    pub fn side(&self) -> Side {
        self.link.side()
    }

    /// The peer's address, when the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.link.peer_addr()
    }

    /// The connection's live counters: table sizes and bytes in and out.
    pub fn stats(&self) -> ConnectionStats {
        self.link.stats()
    }

    /// Change the largest frame accepted and sent (for example after login); never below
    /// [`ReceiveLimits::FLOOR`](crate::handshake::ReceiveLimits::FLOOR). A peer that announced
    /// its own limits in its hello is told at once, so that it may send frames up to the new
    /// limit (and, if it is lower, holds what it sends to it from when it hears of it: frames
    /// already on their way that exceed it close the connection).
    pub fn set_max_frame_len(&self, len: usize) {
        self.link.set_max_frame_len(len)
    }

    /// Change the call window, the most bytes of the peer's calls held or running here at
    /// once (`Limits::max_call_bytes`; for example after login, which starts with four frames'
    /// worth); never below four of the largest frames accepted. A peer that announced a window
    /// of its own hears of it at once, and keeps its calls in flight within it.
    pub fn set_max_call_bytes(&self, bytes: usize) {
        self.link.set_max_call_bytes(bytes)
    }

    /// Record who the peer is (a login, a certificate, ...). Dispatchers see it through
    /// [`Caller::identity`]. One value is kept per type: a value of a type recorded already
    /// replaces it, and values of other types stay (pb's login records a
    /// [`crate::Identity`]; an application can record its own beside it).
    ///
    /// Values are kept while the connection is open. When it closes, the connection lets go of
    /// them (a value that holds a remote reference, such as the client's mind, holds the
    /// connection, which would otherwise never be freed), and drops at once a value recorded
    /// after the close; pb's own [`crate::Identity`], which holds nothing, stays readable.
    pub fn set_identity<T: Any + Send + Sync>(&self, identity: T) {
        let identity: Arc<dyn Any + Send + Sync> = Arc::new(identity);
        let dropped = {
            let mut record = lock(&self.link.record().0);
            if record.forgotten && !identity.is::<crate::identity::Identity>() {
                Some(identity)
            } else {
                let at = record.identities.iter().position(|id| id.is::<T>());
                let old = at.map(|at| record.identities.swap_remove(at));
                record.identities.push(identity);
                old
            }
        };
        // Dropped outside the lock: its drop may run user code.
        drop(dropped);
    }

    /// The identity of type `T` recorded with [`Connection::set_identity`], if any.
    pub fn identity<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let id = lock(&self.link.record().0)
            .identities
            .iter()
            .find(|id| id.is::<T>())
            .cloned()?;
        id.downcast::<T>().ok()
    }

    /// Forget the identity of type `T`, if one was recorded.
    pub fn forget_identity<T: Any + Send + Sync>(&self) {
        let old = {
            let mut record = lock(&self.link.record().0);
            let at = record.identities.iter().position(|id| id.is::<T>());
            at.map(|at| record.identities.swap_remove(at))
        };
        // Dropped outside the lock: its drop may run user code.
        drop(old);
    }

    /// Record the avatar the peer logged in as (the portal does), for [`Caller::avatar`]. It is
    /// kept while the connection is open, or until replaced. When the connection closes, the
    /// connection lets go of it (an avatar that keeps the client's mind holds the connection,
    /// which would otherwise never be freed), and drops at once an avatar recorded after the
    /// close.
    pub fn set_avatar(&self, avatar: ObjectRef) {
        let old = {
            let mut record = lock(&self.link.record().0);
            if record.forgotten {
                Some(avatar)
            } else {
                record.avatar.replace(avatar)
            }
        };
        // Dropped outside the lock: its drop may run user code.
        drop(old);
    }

    /// The avatar recorded with [`Connection::set_avatar`], as a `R` (no check is made that
    /// it implements `R`'s interface: a call to a method it lacks fails with `NoSuchMethod`);
    /// `None` once the connection has closed.
    pub fn avatar<R: Remote>(&self) -> Option<R> {
        let avatar = lock(&self.link.record().0).avatar.clone()?;
        Some(R::from_object_ref(avatar))
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.link.is_closed()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.link.close_reason()
    }

    /// Completes when the connection ends (at once if it has). Every waiter is woken exactly
    /// once per connection.
    pub async fn closed(&self) {
        self.link.closed().await
    }

    /// Close gracefully: take no new calls, let running calls finish and their answers go out
    /// (up to the drain timeout), then close. The peer's calls that arrive meanwhile, and
    /// those read before but held back (at `max_in_flight_calls`, or while the output was
    /// congested), are refused with `ShuttingDown`, never dropped. Our own pending calls fail
    /// with `Disconnected`.
    pub async fn close(&self) {
        if let Some(draining) = self.link.close() {
            draining.await
        }
    }

    /// Close at once: running calls are cancelled, pending calls fail.
    pub fn abort(&self) {
        self.link.abort()
    }
}

/// Who is making a call: handed to every dispatcher.
#[derive(Clone)]
pub struct Caller {
    conn: Option<Connection>,
    deadline: Option<tokio::time::Instant>,
}

impl Caller {
    /// The caller of a call made in-process on a local object.
    pub fn local() -> Caller {
        Caller {
            conn: None,
            deadline: crate::deadline::current(),
        }
    }

    /// The caller of a call that came in on `link`, bound by `deadline`.
    pub(crate) fn remote(link: Arc<dyn Link>, deadline: Option<tokio::time::Instant>) -> Caller {
        Caller {
            conn: Some(Connection::new(link)),
            deadline,
        }
    }

    /// The caller's deadline for this call, if it set one. Calls the handler makes inherit it.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The connection the call came in on (`None` for an in-process call).
    pub fn connection(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    /// The peer's network address, when known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.conn.as_ref().and_then(|c| c.peer_addr())
    }

    /// The identity established for the connection (for example by login), if it is a `T`.
    pub fn identity<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.conn.as_ref().and_then(|c| c.identity::<T>())
    }

    /// The avatar the caller logged in as (Twisted's perspective), as a `R`: the object the
    /// portal's realm made for this connection's login. `None` for a local call, on a
    /// connection that has not logged in, or once the connection has closed.
    pub fn avatar<R: Remote>(&self) -> Option<R> {
        self.conn.as_ref().and_then(|c| c.avatar::<R>())
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.conn {
            Some(c) => write!(f, "Caller(connection {})", c.id()),
            None => f.write_str("Caller(local)"),
        }
    }
}
