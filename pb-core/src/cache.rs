//! Cacheable objects: the owner keeps a [`Cache`], each peer it is sent to holds a [`Replica`]
//! that the owner keeps up to date (Twisted's `Cacheable` / `RemoteCache`).
//!
//! Interfaces name the [`Replica`] type on both sides: the owner sends `cache.replica()`, a
//! local view of its cache, and the peer receives a remote replica. A replica that travels back
//! to its owner arrives as a view of the owner's own cache.
//!
//! A cache travels as an exported object reference plus its state and version. Every connection
//! on which the cache is exported is an observer: [`Cache::update`] applies an update locally
//! and sends it to each observer as an `Update` message, which the replica applies in order.
//! When the peer drops its replica, the reference is released like any other; the owner's count
//! reaches zero, the connection stops observing (Twisted's `stoppedObserving`) and no more updates
//! are sent. Sending the same cache twice on one connection reuses the peer's replica.
//!
//! Updates carry version numbers. If an update happens between the moment a cache's state is
//! encoded for a peer and the moment the message that carries it is queued (whether the peer
//! starts observing then or already observes), the owner follows that message with a full copy
//! of the newer state, so a replica never misses an update: the update itself may have gone to
//! a reference the peer had just dropped.
//!
//! On the receiving side the replica's state is kept by the imported reference, not only by the
//! [`Replica`] clones, so a replica dropped while its reference is still held (by an answer
//! not yet decoded that sends the cache again) goes on receiving updates and is the one that
//! answer decodes to. A replica that still misses an update (it arrives out of sequence, cannot
//! be decoded, or too many arrive before the replica is decoded) does not fail silently: the
//! error is logged, [`Replica::error`] names it and [`Replica::wait_for`] fails with
//! [`CallError::OutOfSync`] until a full state from the owner puts it back in sync.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::watch;

use crate::codec::{self, CodecError};
use crate::link::{ExportLink, Link, MAX_BUFFERED_UPDATES, ReplicaSink, ReplicaSlot};
use crate::object::{
    BoxFuture, CallError, Dispatch, IncomingCall, Interface, ObjectRef, RefInner, Reply,
};

/// State that can be cached: copied to each peer once, then kept up to date by updates.
///
/// For state replaced wholesale, use `type Update = Self` and `*self = update.clone()`.
pub trait CacheState: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// A change to the state. It must not contain object references.
    type Update: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Apply one update.
    fn apply(&mut self, update: &Self::Update);

    /// The type tag a Twisted PB peer knows this state by (its `RemoteCache` class is
    /// registered for it with `setUnjellyableForClass`); the Rust path by default.
    ///
    /// Over Twisted PB the state must serialize as a struct or map (Twisted's state is a dict),
    /// and each update becomes an `observe_<name>` call on the peer's copy: an enum variant's
    /// name is the method's name (use serde's `rename` for Python's spelling) and its fields
    /// are the arguments.
    fn twisted_tag() -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// A value and its version (the number of updates applied since the cache was made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The version.
    pub version: u64,
    /// The value.
    pub value: T,
}

#[derive(Serialize, Deserialize)]
enum CacheMsg<S, U> {
    Replace { version: u64, state: S },
    Apply { version: u64, update: U },
}

#[derive(Default)]
struct Observers {
    /// Connection id → where to send updates.
    linked: HashMap<u64, (Weak<dyn Link>, u64)>,
    /// Connection id → the oldest version encoded for it and not yet observed, and the
    /// connection: an encoding whose message never exported the cache (refused, or to a
    /// connection that closed) leaves its entry, which goes once its connection has closed.
    encoded: HashMap<u64, (u64, Weak<dyn Link>)>,
    /// The size of `encoded` at which its entries of closed connections are let go next:
    /// twice what was left the last time (at least 8), so that letting go costs a constant
    /// time per encoding.
    prune_at: usize,
}

struct CacheInner<T: CacheState> {
    state: watch::Sender<Versioned<T>>,
    /// Serialises the sending of updates so every observer gets them in version order.
    sending: Mutex<()>,
    observers: Mutex<Observers>,
    observer_count: watch::Sender<usize>,
    /// Every change, for [`Replica::updates`] (made on first use).
    changes: Changes<T>,
}

static CACHE_INTERFACE: Interface = Interface {
    name: "Cache",
    methods: &[],
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The owner's side of a cacheable object. Cheap to clone; all clones are the same cache.
///
/// Send [`Cache::replica`] to peers (in arguments or answers): each receives a [`Replica`]
/// that this cache keeps up to date.
pub struct Cache<T: CacheState> {
    inner: Arc<CacheInner<T>>,
}

impl<T: CacheState> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

impl<T: CacheState + fmt::Debug> fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl<T: CacheState> Cache<T> {
    /// A new cache holding `state` at version 0.
    pub fn new(state: T) -> Cache<T> {
        Cache {
            inner: Arc::new(CacheInner {
                state: watch::channel(Versioned {
                    version: 0,
                    value: state,
                })
                .0,
                sending: Mutex::new(()),
                observers: Mutex::new(Observers::default()),
                observer_count: watch::channel(0).0,
                changes: Changes::default(),
            }),
        }
    }

    /// A copy of the current state.
    pub fn get(&self) -> T {
        self.inner.state.borrow().value.clone()
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.inner.state.borrow().version
    }

    /// A replica of this cache: what to send to peers (each receives a copy kept up to date),
    /// and a read-only view here.
    pub fn replica(&self) -> Replica<T> {
        Replica {
            inner: Kind::Local(self.inner.clone()),
        }
    }

    /// Apply `update` here and send it to every observing peer. Returns the new version.
    ///
    /// Fails, changing nothing, if the update cannot be encoded (for example because it holds
    /// an object reference): applied here but not sent, it would leave every replica behind.
    pub fn update(&self, update: T::Update) -> Result<u64, CodecError> {
        let _sending = lock(&self.inner.sending);
        // Only `update` changes the state, under `sending`: the next version is known.
        let version = self.inner.state.borrow().version + 1;
        // A reference encodes as the value does.
        let msg: CacheMsg<(), &T::Update> = CacheMsg::Apply {
            version,
            update: &update,
        };
        let payload = encode_msg(&msg)?;
        self.inner.state.send_modify(|st| {
            st.value.apply(&update);
            st.version = version;
        });
        let update = Arc::new(update);
        self.inner.changes.send(|| ReplicaChange::Update {
            version,
            update: update.clone(),
        });
        let targets: Vec<_> = lock(&self.inner.observers)
            .linked
            .values()
            .cloned()
            .collect();
        // For Twisted PB observers, the update as an `observe_*` call, made once.
        let mut observe = None;
        for (conn, object) in targets {
            if let Some(conn) = conn.upgrade() {
                match conn.twisted() {
                    Some(link) => {
                        let call =
                            observe.get_or_insert_with(|| codec::twisted::observe_call(&*update));
                        twisted_update(link, object, call, version);
                    }
                    None => {
                        conn.send_update(object, payload.clone(), &|| self.inner.catch_up(None))
                    }
                }
            }
        }
        Ok(version)
    }

    /// How many connections observe the cache right now.
    pub fn observers(&self) -> usize {
        *self.inner.observer_count.borrow()
    }

    /// Wait until the number of observers satisfies `f` (checked at once, then on each change).
    pub async fn wait_for_observers(&self, mut f: impl FnMut(usize) -> bool) -> usize {
        let mut rx = self.inner.observer_count.subscribe();
        match rx.wait_for(|n| f(*n)).await {
            Ok(n) => *n,
            Err(_) => self.observers(),
        }
    }
}

/// Sends an update to a Twisted PB observer as a `cachemessage` (no answer asked).
fn twisted_update(
    link: &dyn crate::link::TwistedLink,
    object: u64,
    call: &Result<(String, pb_proto::jelly::Graph), CodecError>,
    version: u64,
) {
    match call {
        Ok((method, args)) => link.send_observe(object, method, args, version),
        Err(e) => {
            tracing::error!(error = %e, "cannot send a cache update to a Twisted PB observer")
        }
    }
}

fn encode_msg<S: Serialize, U: Serialize>(msg: &CacheMsg<S, U>) -> Result<Bytes, CodecError> {
    let (payload, refs) = codec::encode(msg, None)?;
    if !refs.is_empty() {
        return Err(CodecError::Encode(
            "cache updates cannot contain object references".into(),
        ));
    }
    Ok(payload)
}

impl<T: CacheState> CacheInner<T> {
    /// A cache travels as its handle (an exported reference), its version and its state.
    fn serialize_for_peer<S: Serializer>(self: &Arc<Self>, s: S) -> Result<S::Ok, S::Error> {
        let snapshot = self.state.borrow().clone();
        if let Some(peer) = codec::current_peer() {
            let mut obs = lock(&self.observers);
            if obs.encoded.len() >= obs.prune_at.max(8) {
                obs.encoded
                    .retain(|_, (_, conn)| conn.upgrade().is_some_and(|c| !c.is_closed()));
                obs.prune_at = 2 * obs.encoded.len();
            }
            let e = obs
                .encoded
                .entry(peer.id())
                .or_insert((snapshot.version, peer.downgrade()));
            e.0 = e.0.min(snapshot.version);
        }
        let handle = ObjectRef::from_arc(self.clone());
        if s.is_human_readable() {
            // Only the Jelly format (Twisted PB) is human-readable here: the cache goes as a
            // Cacheable, whose tag and state Twisted reads.
            let Some(index) = codec::collect_ref(&handle) else {
                return Err(serde::ser::Error::custom(
                    "a cache can only be encoded as part of a pb call",
                ));
            };
            return s.serialize_newtype_struct(
                codec::jelly::magic::CACHE,
                &(index, T::twisted_tag(), snapshot.version, &snapshot.value),
            );
        }
        (handle, snapshot.version, snapshot.value).serialize(s)
    }

    /// What must follow a message that carries the state encoded at version `encoded` (`None`:
    /// unknown, so assume older): the current state, if it is newer.
    fn catch_up(&self, encoded: Option<u64>) -> Option<Bytes> {
        let st = self.state.borrow();
        if encoded.is_some_and(|v| v >= st.version) {
            return None;
        }
        let msg: CacheMsg<&T, ()> = CacheMsg::Replace {
            version: st.version,
            state: &st.value,
        };
        match encode_msg(&msg) {
            Ok(p) => Some(p),
            Err(e) => {
                // The replica falls behind; it reports that itself at the next update.
                tracing::error!(error = %e, "cannot encode a cache catch-up");
                None
            }
        }
    }
}

impl<T: CacheState> CacheInner<T> {
    /// The connection `link` names observes the cache from now on; returns the version last
    /// encoded for it, if any.
    fn observe(&self, link: &ExportLink) -> Option<u64> {
        let mut obs = lock(&self.observers);
        let encoded = obs.encoded.remove(&link.connection).map(|(v, _)| v);
        obs.linked
            .insert(link.connection, (link.conn.clone(), link.object));
        self.observer_count.send_replace(obs.linked.len());
        encoded
    }

    /// Under `sending`: send the connection `link` names what changed since the state encoded
    /// for it at `encoded`. If the export ended before its hook ran (the peer released it at
    /// once), the connection stops observing here: the `on_unexport` hook ran first and found
    /// nothing to end.
    fn send_catch_up(&self, link: &ExportLink, encoded: Option<u64>) {
        let exported = link.conn.upgrade().is_some_and(|conn| {
            if let Some(update) = self.catch_up(encoded) {
                conn.send_update(link.object, update, &|| None);
            }
            conn.is_exported(link.object)
        });
        if !exported {
            self.on_unexport(link.connection, link.object);
        }
    }
}

impl<T: CacheState> Dispatch for CacheInner<T> {
    fn interface(&self) -> &'static Interface {
        &CACHE_INTERFACE
    }

    fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply> {
        let reply = call.no_such_method(&CACHE_INTERFACE);
        Box::pin(std::future::ready(reply))
    }

    fn as_any(self: Arc<Self>) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(self)
    }

    fn on_export(&self, link: &ExportLink) {
        // Under `sending`, as `update`: the catch-up and the updates reach the connection in
        // version order. The hook runs after the message that carries the cache was queued, so
        // both follow it.
        let _sending = lock(&self.sending);
        let encoded = self.observe(link);
        self.send_catch_up(link, encoded);
    }

    fn on_resend(&self, link: &ExportLink) {
        // The peer observes already, but the updates made since this state was encoded went
        // to a reference it may have dropped meanwhile (its release crossing this message):
        // the replica this message makes would start behind them.
        let _sending = lock(&self.sending);
        let encoded = lock(&self.observers)
            .encoded
            .remove(&link.connection)
            .map(|(v, _)| v);
        self.send_catch_up(link, encoded);
    }

    fn on_unexport(&self, connection: u64, object: u64) {
        let mut obs = lock(&self.observers);
        // The hook runs after the connection's lock is released: the cache may have been
        // exported to the connection again meanwhile, under a new id, and that observer stays.
        if obs
            .linked
            .get(&connection)
            .is_some_and(|&(_, linked)| linked == object)
        {
            obs.linked.remove(&connection);
            obs.encoded.remove(&connection);
            self.observer_count.send_replace(obs.linked.len());
        }
    }
}

/// Why a replica stopped following its cache: it missed an update, so its state is older than
/// the owner's and updates no longer apply to it. A full state from the owner puts it back in
/// sync; dropping every clone of the replica and fetching the cache again gives a fresh one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// An update arrived for a later version than the next one: those between were missed.
    #[error("cache update for version {got} arrived at version {have}: updates were missed")]
    OutOfSequence {
        /// The replica's version.
        have: u64,
        /// The version of the update that arrived.
        got: u64,
    },
    /// An update could not be decoded (the peers disagree on the cache's types).
    #[error("undecodable cache update at version {have}: {reason}")]
    Undecodable {
        /// The replica's version.
        have: u64,
        /// The decoder's error.
        reason: String,
    },
    /// More updates arrived before the replica was decoded than are kept for it (`max` of
    /// them, or 16 MiB, or what is left of the 64 MiB its connection keeps for all its
    /// replicas).
    #[error(
        "more than {max} cache updates (or 16 MiB of them, or more than its connection keeps for all its replicas) arrived before the replica was decoded"
    )]
    TooManyBuffered {
        /// The most kept.
        max: usize,
    },
}

/// A remote replica's state: shared by its [`Replica`] clones and the slot of the imported
/// handle, which applies updates to it.
struct ReplicaState<T: CacheState> {
    state: watch::Sender<Versioned<T>>,
    /// Set when an update was missed; cleared by a full state from the owner.
    error: Mutex<Option<ReplicaError>>,
    /// Every change, for [`Replica::updates`] (made on first use).
    changes: Changes<T>,
}

impl<T: CacheState> ReplicaState<T> {
    fn new(version: u64, value: T) -> ReplicaState<T> {
        ReplicaState {
            state: watch::channel(Versioned { version, value }).0,
            error: Mutex::new(None),
            changes: Changes::default(),
        }
    }

    /// The replica no longer follows its cache: say so once, and wake its waiters.
    fn fail(&self, error: ReplicaError) {
        let mut slot = lock(&self.error);
        if slot.is_none() {
            tracing::error!(%error, "a cache replica stopped following its owner");
            *slot = Some(error);
            drop(slot);
            self.state.send_modify(|_| {});
        }
    }

    fn error(&self) -> Option<ReplicaError> {
        lock(&self.error).clone()
    }
}

impl<T: CacheState> ReplicaState<T> {
    /// Applies the next update (a Twisted owner's `observe_*` call, which carries no version).
    fn apply_next(&self, update: T::Update) {
        let version = self.state.borrow().version + 1;
        self.apply_msg(CacheMsg::Apply { version, update });
    }

    fn apply_msg(&self, msg: CacheMsg<T, T::Update>) {
        let mut missed = None;
        let mut in_sync = false;
        let mut change = None;
        self.state.send_if_modified(|st| match msg {
            CacheMsg::Replace { version, state } if version > st.version => {
                *st = Versioned {
                    version,
                    value: state,
                };
                in_sync = true;
                change = Some(ReplicaChange::State(st.clone()));
                true
            }
            CacheMsg::Apply { version, update } if version == st.version + 1 => {
                st.value.apply(&update);
                st.version = version;
                change = Some(ReplicaChange::Update {
                    version,
                    update: Arc::new(update),
                });
                true
            }
            CacheMsg::Apply { version, .. } if version > st.version + 1 => {
                missed = Some(ReplicaError::OutOfSequence {
                    have: st.version,
                    got: version,
                });
                false
            }
            // What the replica has already (a full state may overlap the updates around it).
            _ => false,
        });
        if let Some(change) = change {
            self.changes.send(|| change);
        }
        if let Some(error) = missed {
            self.fail(error);
        } else if in_sync && lock(&self.error).take().is_some() {
            tracing::info!("a cache replica is back in sync with its owner");
        }
    }
}

impl<T: CacheState> ReplicaSink for ReplicaState<T> {
    fn apply(&self, payload: &[u8]) {
        match codec::decode(payload, Vec::new()) {
            Ok(msg) => self.apply_msg(msg),
            Err(e) => {
                let have = self.state.borrow().version;
                self.fail(ReplicaError::Undecodable {
                    have,
                    reason: e.to_string(),
                });
            }
        }
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// A copy of a [`Cache`] kept up to date by its owner: on a peer, the remote replica; on the
/// owner, a read-only view of the cache itself (what the owner sends). Cheap to clone.
///
/// When the last clone of a remote replica is dropped, the owner is told and stops sending it
/// updates.
pub struct Replica<T: CacheState> {
    inner: Kind<T>,
}

enum Kind<T: CacheState> {
    Local(Arc<CacheInner<T>>),
    Remote {
        /// The imported handle: holding it keeps the owner sending updates.
        owner: ObjectRef,
        state: Arc<ReplicaState<T>>,
    },
}

impl<T: CacheState> Clone for Replica<T> {
    fn clone(&self) -> Self {
        Replica {
            inner: match &self.inner {
                Kind::Local(c) => Kind::Local(c.clone()),
                Kind::Remote { owner, state } => Kind::Remote {
                    owner: owner.clone(),
                    state: state.clone(),
                },
            },
        }
    }
}

impl<T: CacheState + fmt::Debug> fmt::Debug for Replica<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("local", &self.is_local())
            .field("state", &*self.state().borrow())
            .finish()
    }
}

impl<T: CacheState> PartialEq for Replica<T> {
    fn eq(&self, other: &Self) -> bool {
        match (&self.inner, &other.inner) {
            (Kind::Local(a), Kind::Local(b)) => Arc::ptr_eq(a, b),
            (Kind::Remote { state: a, .. }, Kind::Remote { state: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl<T: CacheState> Replica<T> {
    fn state(&self) -> &watch::Sender<Versioned<T>> {
        match &self.inner {
            Kind::Local(c) => &c.state,
            Kind::Remote { state, .. } => &state.state,
        }
    }

    /// Whether this is a view of a cache owned here.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Kind::Local(_))
    }

    /// The cache itself, when it is owned here.
    pub fn cache(&self) -> Option<Cache<T>> {
        match &self.inner {
            Kind::Local(c) => Some(Cache { inner: c.clone() }),
            Kind::Remote { .. } => None,
        }
    }

    /// A copy of the current state.
    pub fn get(&self) -> T {
        self.state().borrow().value.clone()
    }

    /// The version of the current state.
    pub fn version(&self) -> u64 {
        self.state().borrow().version
    }

    /// A receiver that sees every change (`changed().await`, `borrow()`); it is also woken,
    /// with no change, when the replica stops following its cache (see [`Replica::error`]).
    pub fn subscribe(&self) -> watch::Receiver<Versioned<T>> {
        self.state().subscribe()
    }

    /// Every change of the state, in order: first the state as it is now, then each update
    /// as it is applied (with its version), and each whole state the owner sends (after the
    /// replica missed updates). Unlike [`Replica::subscribe`], nothing is coalesced; a receiver
    /// that falls more than 256 changes behind gets the current whole state in place of those
    /// it missed. On a peer, updates that arrive on a connection before a call from the owner
    /// are applied before that call runs. The stream ends when the replica's state is gone.
    pub fn updates(&self) -> ReplicaUpdates<T> {
        let changes = match &self.inner {
            Kind::Local(c) => &c.changes,
            Kind::Remote { state, .. } => &state.changes,
        };
        // Subscribed before the state is read: a change in between is seen twice at most,
        // and the version filter in `next` drops the repeat.
        let rx = changes.subscribe();
        let state = self.state().subscribe();
        let first = state.borrow().clone();
        ReplicaUpdates {
            rx,
            state,
            first: Some(first),
            last: None,
        }
    }

    /// Why this replica no longer follows its cache, if it does not: it missed an update (the
    /// error was logged when it happened) and holds an older state than the owner. A full state
    /// from the owner puts it back in sync; dropping every clone and fetching the cache again
    /// gives a fresh replica. Always `None` for a local view.
    pub fn error(&self) -> Option<ReplicaError> {
        match &self.inner {
            Kind::Local(_) => None,
            Kind::Remote { state, .. } => state.error(),
        }
    }

    /// Wait until the state satisfies `f` (checked at once, then on each update); fails if the
    /// connection to the owner is lost first ([`CallError::Disconnected`]), or if the replica
    /// stops following its cache before the state satisfies `f` ([`CallError::OutOfSync`],
    /// see [`Replica::error`]).
    pub async fn wait_for(
        &self,
        mut f: impl FnMut(&T) -> bool,
    ) -> Result<T, CallError<std::convert::Infallible>> {
        let mut rx = self.state().subscribe();
        match &self.inner {
            Kind::Local(_) => match rx.wait_for(|v| f(&v.value)).await {
                Ok(v) => Ok(v.value.clone()),
                Err(_) => Err(CallError::Disconnected),
            },
            Kind::Remote { owner, state } => {
                let wait = async {
                    let mut failed = None;
                    let found = rx
                        .wait_for(|v| {
                            // Out of sync, the state is stale whatever it says: checked first.
                            failed = state.error();
                            failed.is_some() || f(&v.value)
                        })
                        .await;
                    match (found, failed) {
                        (Ok(_), Some(e)) => Err(CallError::OutOfSync(e.to_string())),
                        (Ok(v), None) => Ok(v.value.clone()),
                        (Err(_), _) => Err(CallError::Disconnected),
                    }
                };
                // The state first: one that holds already is the answer, even once the owner
                // is gone.
                tokio::select! {
                    biased;
                    r = wait => r,
                    _ = owner.disconnected() => Err(CallError::Disconnected),
                }
            }
        }
    }

    /// Whether the owner can still be reached (always, for a local view).
    pub fn is_connected(&self) -> bool {
        match &self.inner {
            Kind::Local(_) => true,
            Kind::Remote { owner, .. } => owner.is_connected(),
        }
    }

    /// Completes when the connection to the owner is lost (never, for a local view).
    pub async fn disconnected(&self) {
        match &self.inner {
            Kind::Local(_) => std::future::pending().await,
            Kind::Remote { owner, .. } => owner.disconnected().await,
        }
    }
}

impl<T: CacheState> Serialize for Replica<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.inner {
            Kind::Local(c) => c.serialize_for_peer(s),
            Kind::Remote { owner, state } => {
                // Back to its owner, it goes as the owner's own object; anywhere else it would
                // need the owner to observe through us, which pb does not do.
                let home = owner.peer().map(|c| c.id());
                if home.is_none() || codec::current_peer().map(|c| c.id()) != home {
                    return Err(serde::ser::Error::custom(
                        "a replica can only be sent back to its owner",
                    ));
                }
                if s.is_human_readable() {
                    // Over Twisted PB, the owner's own Cacheable: `["lcache", luid]`.
                    return owner.serialize(s);
                }
                let st = state.state.borrow().clone();
                (owner, st.version, st.value).serialize(s)
            }
        }
    }
}

/// A replica of a Twisted PB peer's Cacheable: its state read as `T` from the copy the driver
/// keeps, its owner's `observe_<variant>(*fields)` calls applied as `T::Update`s, in order.
fn twisted_replica<T: CacheState>(
    owner: ObjectRef,
    copy: &Arc<CacheCopy>,
) -> Result<Replica<T>, String> {
    if let Some(existing) = copy.replica() {
        let state = existing
            .downcast::<ReplicaState<T>>()
            .map_err(|_| "a cache already received as a replica of another type".to_owned())?;
        return Ok(Replica {
            inner: Kind::Remote { owner, state },
        });
    }
    let limits = (codec::DEFAULT_MAX_DEPTH, copy.max_copied());
    let value: T = codec::jelly::from_graph(copy.state(), None, limits).map_err(|e| {
        format!(
            "the Cacheable's state is not a {}: {e}",
            std::any::type_name::<T>()
        )
    })?;
    let state = Arc::new(ReplicaState::new(0, value));
    let follower = Arc::downgrade(&state);
    copy.follow(Box::new(move |method, args| {
        let Some(state) = follower.upgrade() else {
            return;
        };
        match codec::twisted::update_of::<T::Update>(method, args, limits) {
            Ok(update) => state.apply_next(update),
            Err(e) => {
                let have = state.state.borrow().version;
                state.fail(ReplicaError::Undecodable {
                    have,
                    reason: format!("observe_{method}: {e}"),
                });
            }
        }
    }));
    copy.set_replica(state.clone());
    Ok(Replica {
        inner: Kind::Remote { owner, state },
    })
}

/// Our own cache, come back to us: the owner's view of it.
fn own_cache<T: CacheState, E: serde::de::Error>(
    object: &Arc<dyn Dispatch>,
) -> Result<Replica<T>, E> {
    object
        .clone()
        .as_any()
        .and_then(|a| a.downcast::<CacheInner<T>>().ok())
        .map(|c| Replica {
            inner: Kind::Local(c),
        })
        .ok_or_else(|| E::custom("a local object that is not a cache of this type"))
}

impl<'de, T: CacheState> Deserialize<'de> for Replica<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            // Over Twisted PB: a Cacheable's flavor, which the driver resolved to a handle
            // holding the copy.
            let owner = ObjectRef::deserialize(d)?;
            let copy = match &owner.0 {
                RefInner::Remote(imp) => match &*lock(&imp.replica) {
                    ReplicaSlot::Attached(sink) => {
                        sink.clone().as_any().downcast::<CacheCopy>().ok()
                    }
                    _ => None,
                },
                // Our own cache came home (`["lcache", luid]`).
                RefInner::Local(object) => return own_cache(object),
            };
            let copy = copy.ok_or_else(|| serde::de::Error::custom("not a Cacheable"))?;
            return twisted_replica(owner, &copy).map_err(serde::de::Error::custom);
        }
        let (owner, version, value): (ObjectRef, u64, T) = Deserialize::deserialize(d)?;
        if codec::probing() {
            // Decoded only to see that the bytes decode: the import's slot is left alone.
            return Ok(Replica {
                inner: Kind::Remote {
                    owner,
                    state: Arc::new(ReplicaState::new(version, value)),
                },
            });
        }
        let imp = match &owner.0 {
            RefInner::Remote(imp) => imp.clone(),
            // Our own cache came back: the owner's view of it.
            RefInner::Local(object) => return own_cache(object),
        };
        let mut slot = lock(&imp.replica);
        let (pending, overflowed) = match std::mem::take(&mut *slot) {
            // The cache was sent again while this reference was held: its replica goes on,
            // with every update that arrived since.
            ReplicaSlot::Attached(existing) => {
                let found = existing.clone().as_any().downcast::<ReplicaState<T>>();
                *slot = ReplicaSlot::Attached(existing);
                let state = found.map_err(|_| {
                    serde::de::Error::custom(
                        "a cache already received as a replica of another type",
                    )
                })?;
                return Ok(Replica {
                    inner: Kind::Remote { owner, state },
                });
            }
            ReplicaSlot::Unattached => (Vec::new(), false),
            ReplicaSlot::Buffered {
                pending,
                overflowed,
                ..
            } => (pending, overflowed),
        };
        let state = Arc::new(ReplicaState::new(version, value));
        for payload in pending {
            state.apply(&payload);
        }
        if overflowed {
            state.fail(ReplicaError::TooManyBuffered {
                max: MAX_BUFFERED_UPDATES,
            });
        }
        *slot = ReplicaSlot::Attached(state.clone());
        drop(slot);
        Ok(Replica {
            inner: Kind::Remote { owner, state },
        })
    }
}

mod changes;
mod twisted;

use self::changes::Changes;
pub use self::changes::{ReplicaChange, ReplicaUpdates};
pub(crate) use self::twisted::CacheCopy;

#[cfg(test)]
mod tests;
