//! The tokio driver that pumps a [`Broker`] over a transport, and the [`Connection`] handle.
//!
//! Each connection runs a reader that decodes frames and feeds them to the broker (running the
//! handlers of incoming calls inline, and writing a batch's answers at once), in a task of its
//! own or in one the caller already has ([`Connection::establish_with_reader`]), and, from the
//! first time it is needed, a writer task that drains what nobody wrote directly with vectored
//! writes (so everything queued while a write was in progress goes out in one system call). A
//! caller whose call is the only one pending writes it itself. Handlers that have to wait run
//! in tasks of their own. The broker sits behind a mutex held only for bookkeeping, never
//! across an await.
//!
//! Dropping the last handle to an imported reference must not take the broker's lock (it may
//! happen anywhere, even while the lock is held), so releases go through a queue of their own
//! that the writer folds into the broker.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::broker::{Broker, CallEvent, Flush, Limits, Payload, ProtocolError, TableStats};
use crate::cache::ReplicaSlot;
use crate::frame::{FrameDecoder, HEADER_LEN, MIN_READ};
use crate::handshake::{
    Features, HELLO_LEN, HELLO_LIMITS_LEN, HELLO_MAX_LEN, HandshakeError, Hello,
};
use crate::message::FaultKind;
use crate::object::{
    BoxFuture, Fault, IncomingCall, MethodName, ObjectRef, Remote, Reply, disconnected_fault,
};
use pb_proto::liveness::{Liveness, LivenessConfig, Timeout};

/// A connection's recorded identity, of whatever type the application chose.
type Identity = Arc<dyn Any + Send + Sync>;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Which end of a connection we are. The protocol is symmetric after the handshake; the side
/// only matters for logging and for who sends the first byte of a TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// We dialed.
    Client,
    /// We accepted.
    Server,
}

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Table and message limits.
    pub limits: Limits,
    /// How long the peer has to send its hello (default 10 s).
    pub handshake_timeout: Duration,
    /// How long a graceful close waits for running calls (default 30 s).
    pub drain_timeout: Duration,
    /// Optional features we offer. ([`Features::LIMITS`] is not one to choose: our hello
    /// always carries our limits.)
    pub features: Features,
    /// After this long without a frame from the peer, send it a ping (default 20 s; `None`:
    /// never). A live peer answers at once, which keeps a quiet connection from being idle.
    pub keepalive_interval: Option<Duration>,
    /// Close the connection after this long without one complete frame from the peer (default
    /// 60 s; `None`: never). With keep-alive on, a healthy quiet peer answers the pings and is
    /// never cut; a half-open peer that stopped answering is, and so is one that trickles a
    /// frame in byte by byte.
    pub idle_timeout: Option<Duration>,
    /// Close the connection when more than `Limits::max_unsent_bytes` wait to be written and
    /// not one byte of it went out for this long (default 60 s; `None`: never): the peer has
    /// stopped reading.
    pub write_stall_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            features: Features::NONE,
            keepalive_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(60)),
            write_stall_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Establishing a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The transport failed.
    #[error("i/o error")]
    Io(#[from] io::Error),
    /// The handshake failed.
    #[error("handshake failed")]
    Handshake(#[from] HandshakeError),
    /// The peer closed the connection during the handshake.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The peer did not complete the handshake in time.
    #[error("the handshake timed out after {0:?}")]
    Timeout(Duration),
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
    IdleTimeout(Duration),
    /// The peer's hello was refused (on a connection made with [`Connection::dial`], which
    /// checks it after returning): it speaks another protocol version, or not pb at all.
    Handshake(HandshakeError),
    /// Output was over `Limits::max_unsent_bytes` and none of it could be written for the
    /// configured `write_stall_timeout`: the peer stopped reading.
    WriteStalled(Duration),
}

/// A handle to an object the peer exported to us.
pub(crate) struct Imported {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) id: u64,
    generation: u64,
    received: AtomicU64,
    /// Where cache updates for this object go, if it is a cache.
    pub(crate) replica: Mutex<ReplicaSlot>,
    /// Set when the owner revoked the object, or when a connection it depends on was lost.
    dead: AtomicBool,
    /// Wakes `disconnected()` waiters when the object is revoked.
    revoked: Notify,
    /// Our exports to other peers that forward to this object: (connection, export id).
    pub(crate) dependents: Mutex<Vec<(Weak<ConnShared>, u64)>>,
}

/// Where an exported object lives: the connection and the id the peer knows it by.
#[doc(hidden)]
#[derive(Clone)]
pub struct ExportLink {
    pub(crate) conn: Weak<ConnShared>,
    pub(crate) connection: u64,
    pub(crate) object: u64,
}

impl Imported {
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

/// State shared by a connection's tasks, its handle and every reference into it.
pub(crate) struct ConnShared {
    id: u64,
    side: Side,
    peer_addr: Option<SocketAddr>,
    broker: Mutex<Broker>,
    releases: Mutex<Vec<(u64, u64, u64)>>,
    /// Set after a release is queued: the write path takes `releases`' lock only then.
    releases_queued: AtomicBool,
    /// The transport's write half: `None` before the connection is established and after the
    /// writer has shut it down. Whoever holds the lock may write (see [`ConnShared::flush_now`]).
    out: Mutex<Option<Output>>,
    /// Wakes the writer task, which starts on the first wake-up.
    wake_writer: WriterWake,
    call_done: Notify,
    max_frame_len: AtomicUsize,
    /// Set once the peer's hello (and with it the peer's limits) has arrived: at once on a
    /// connection that waited for it, later on a dialed one (see [`ConnShared::call`]).
    peer_known: AtomicBool,
    /// Wakes callers waiting for the peer's hello (and all of them when the connection closes).
    peer_hello: Notify,
    /// `Limits::max_depth`, read by every decode of a value that came in on this connection.
    pub(crate) max_depth: usize,
    /// Why the connection ended: set once, by the first close.
    close_reason: OnceLock<CloseReason>,
    /// Wakes those waiting for the close (one `notify_waiters`, made by the first close).
    closed: Notify,
    /// Set by the first close, after `close_reason`: checked on every write and call.
    is_closed: AtomicBool,
    drain_timeout: Duration,
    identity: Mutex<Option<Identity>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Bytes handed to the write path and not yet written (see [`Limits::max_unsent_bytes`]).
    unsent: AtomicUsize,
    /// `Limits::max_unsent_bytes`.
    max_unsent: usize,
    /// The most frames the reader holds back before it stops reading
    /// (`Limits::max_in_flight_calls`).
    max_held_frames: usize,
    /// Set when `unsent` goes over `max_unsent`, cleared when it is back to half of it.
    congested: AtomicBool,
    /// Wakes callers waiting for the output to drain.
    space: Notify,
    /// Wakes the reader to run the frames it held back while the output was congested.
    drained: Notify,
    write_stall_timeout: Option<Duration>,
}

impl ConnShared {
    pub(crate) fn new(
        config: &Config,
        side: Side,
        peer_addr: Option<SocketAddr>,
        root: Option<ObjectRef>,
    ) -> Arc<ConnShared> {
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        Arc::new_cyclic(|me| ConnShared {
            id,
            side,
            peer_addr,
            broker: Mutex::new(Broker::new(config.limits.clone(), id, root, me.clone())),
            releases: Mutex::new(Vec::new()),
            releases_queued: AtomicBool::new(false),
            out: Mutex::new(None),
            wake_writer: WriterWake::default(),
            call_done: Notify::new(),
            max_frame_len: AtomicUsize::new(config.limits.receive().max_frame_len),
            peer_known: AtomicBool::new(false),
            peer_hello: Notify::new(),
            max_depth: config.limits.max_depth,
            close_reason: OnceLock::new(),
            closed: Notify::new(),
            is_closed: AtomicBool::new(false),
            drain_timeout: config.drain_timeout,
            identity: Mutex::new(None),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            unsent: AtomicUsize::new(0),
            max_unsent: config.limits.max_unsent_bytes.max(1),
            max_held_frames: config.limits.max_in_flight_calls.max(1),
            congested: AtomicBool::new(false),
            space: Notify::new(),
            drained: Notify::new(),
            write_stall_timeout: config.write_stall_timeout,
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, Broker> {
        // A panic while holding the lock cannot leave the tables half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is used as is.
        self.broker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    pub(crate) async fn closed(&self) {
        let notified = self.closed.notified();
        tokio::pin!(notified);
        // Registered before the check: a close after it wakes us.
        notified.as_mut().enable();
        if !self.is_closed() {
            notified.await;
        }
    }

    /// Whether more than `Limits::max_unsent_bytes` wait to be written (and have not yet
    /// drained to half of that).
    fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Acquire)
    }

    /// Completes once the output is not congested, or the connection is closed.
    async fn output_space(&self) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_congested() || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// The broker holds `queued` bytes not yet in the write queue: past the limit, move them
    /// there now, so they count and the output shows as congested.
    fn note_queued(&self, queued: usize) {
        if queued + self.unsent.load(Ordering::Relaxed) > self.max_unsent {
            self.collect_now();
        }
    }

    /// Count `n` more bytes handed to the write path.
    fn add_unsent(&self, n: usize) {
        let now = self.unsent.fetch_add(n, Ordering::AcqRel) + n;
        if now > self.max_unsent && !self.is_congested() {
            self.congested.store(true, Ordering::Release);
            tracing::debug!(
                connection = self.id,
                unsent = now,
                max_unsent_bytes = self.max_unsent,
                "output congested: holding back the peer's calls until it drains"
            );
        }
    }

    /// Count `n` bytes written; wake whoever waits for the output to drain.
    fn sub_unsent(&self, n: usize) {
        let now = self.unsent.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
        if now <= self.max_unsent / 2 && self.is_congested() {
            self.congested.store(false, Ordering::Release);
            self.space.notify_waiters();
            self.drained.notify_one();
        }
    }

    /// The peer's hello arrived: from now on what we send is held to the limits it carries.
    /// Returns whether that queued output (see [`Broker::set_peer_limits`]).
    fn peer_hello(&self, theirs: &Hello) -> bool {
        let queued = self.lock().set_peer_limits(theirs.limits);
        self.peer_known.store(true, Ordering::Release);
        self.peer_hello.notify_waiters();
        queued
    }

    /// Completes once a call of this size may be started: at once if the peer's hello has
    /// arrived or the call is within the floor any peer accepts; otherwise when the hello
    /// arrives or the connection closes (after which `start_call` decides).
    ///
    /// Only a dialed connection waits: it sends its first calls without waiting for the peer's
    /// hello (one round trip for connecting and calling). Those calls cannot be checked
    /// against limits the peer has not announced yet, and sending them unchecked could cost
    /// the connection; refusing those over the floor would fail calls the peer would take.
    /// So a call within [`ReceiveLimits::FLOOR`](crate::handshake::ReceiveLimits::FLOOR),
    /// which every pb peer accepts, leaves at once, and a larger one waits one round trip, for
    /// the hello, then is sent or refused against the peer's own limits.
    async fn peer_limits_for(&self, method_len: usize, payload_len: usize, refs: usize) {
        if Broker::fits_floor(method_len, payload_len, refs) {
            return;
        }
        loop {
            let notified = self.peer_hello.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.peer_known.load(Ordering::Acquire) || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    fn make_import(self: &Arc<Self>) -> impl Fn(u64, u64) -> Arc<Imported> + '_ {
        move |id, generation| {
            Arc::new(Imported {
                conn: self.clone(),
                id,
                generation,
                received: AtomicU64::new(if id == 0 { 0 } else { 1 }),
                replica: Mutex::new(ReplicaSlot::default()),
                dead: AtomicBool::new(false),
                revoked: Notify::new(),
                dependents: Mutex::new(Vec::new()),
            })
        }
    }

    pub(crate) fn root_ref(self: &Arc<Self>) -> ObjectRef {
        let make = self.make_import();
        ObjectRef(crate::object::RefInner::Remote(make(0, 0)))
    }

    fn queue_release(&self, id: u64, generation: u64, count: u64) {
        if self.is_closed() {
            return;
        }
        self.releases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, generation, count));
        self.releases_queued.store(true, Ordering::Release);
        self.wake_writer.notify_one();
    }

    /// Call the peer's object `target` and wait for the reply.
    pub(crate) async fn call(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
    ) -> Reply {
        let span = tracing::debug_span!(
            "pb.call",
            direction = "out",
            connection = self.id,
            peer = tracing::field::Empty,
            request_id = tracing::field::Empty,
            object = target,
            method,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        // Without a subscriber that wants it (the usual case) the span is disabled, and the
        // call pays for no tracing beyond this check.
        let traced = !span.is_disabled();
        let started = traced.then(|| {
            if let Some(addr) = self.peer_addr {
                span.record("peer", tracing::field::display(addr));
            }
            std::time::Instant::now()
        });
        // One async body, entered in the span (as `instrument` would) only when traced: an
        // inner async fn per case would cost a nested future and its moves on every call.
        let reply = 'call: {
            let deadline = crate::deadline::current();
            if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                break 'call Err(deadline_fault());
            }
            if self.is_congested() {
                // Backpressure: the peer is not taking what we already queued for it.
                let space = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, self.output_space())
                            .await
                            .map_err(|_| deadline_fault()),
                        None => {
                            self.output_space().await;
                            Ok(())
                        }
                    }
                };
                if let Err(f) = space.instrument(span.clone()).await {
                    break 'call Err(f);
                }
            }
            if !self.peer_known.load(Ordering::Acquire) {
                let known =
                    self.peer_limits_for(method.len(), payload.as_slice().len(), refs.len());
                let known = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, known)
                            .await
                            .map_err(|_| deadline_fault()),
                        None => {
                            known.await;
                            Ok(())
                        }
                    }
                };
                if let Err(f) = known.instrument(span.clone()).await {
                    break 'call Err(f);
                }
            }
            // The task's waker goes into the call's slot at once, so the first poll of the
            // answer need not take the lock to leave it there.
            let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
            let id = {
                let _entered = traced.then(|| span.enter());
                let queued_call = {
                    let mut broker = self.lock();
                    broker
                        .start_call(
                            target,
                            method,
                            payload,
                            &refs,
                            (Some(waker), deadline.map(crate::deadline::remaining_ms)),
                        )
                        .map(|id| match broker.who_flushes() {
                            // A lone caller writes its call itself, taking the output while
                            // it holds the broker's lock.
                            Flush::Caller => match self.take_output(&mut broker) {
                                Some(taken) => (id, 0, Flush::Caller, Some(taken)),
                                None => (id, broker.queued_bytes(), Flush::Caller, None),
                            },
                            flush => (id, broker.queued_bytes(), flush, None),
                        })
                };
                drop(refs);
                match queued_call {
                    Ok((id, queued, flush, taken)) => {
                        span.record("request_id", id);
                        match taken {
                            Some((out, added)) => {
                                if added > 0 {
                                    self.add_unsent(added);
                                }
                                self.write_now(out);
                            }
                            None => {
                                self.note_queued(queued);
                                self.after_queueing(flush);
                            }
                        }
                        id
                    }
                    Err(f) => break 'call Err(f),
                }
            };
            let answer = Answer {
                conn: self,
                id,
                done: false,
                first: true,
            };
            // On expiry the answer's future is dropped, which cancels the call on the peer.
            match (deadline, traced) {
                (None, false) => answer.await,
                (None, true) => answer.instrument(span.clone()).await,
                (Some(d), false) => tokio::time::timeout_at(d, answer)
                    .await
                    .unwrap_or_else(|_| Err(deadline_fault())),
                (Some(d), true) => tokio::time::timeout_at(d, answer)
                    .instrument(span.clone())
                    .await
                    .unwrap_or_else(|_| Err(deadline_fault())),
            }
        };
        if let Some(started) = started {
            span.record("outcome", outcome_name(Some(&reply)));
            span.record("duration_us", started.elapsed().as_micros() as u64);
        }
        reply
    }

    /// A caller queued a call: write it now, or leave it to the reader's or the writer task's
    /// next write (see [`Broker::who_flushes`]).
    fn after_queueing(&self, flush: Flush) {
        match flush {
            Flush::Caller => self.flush_now(),
            Flush::Writer => self.wake_writer.notify_one(),
            Flush::Reader => {}
        }
    }

    /// Send a cache update to the peer, if the cache is still exported to it.
    pub(crate) fn send_update(&self, object: u64, payload: Bytes) {
        if self.lock().send_update(object, payload) {
            self.wake_writer.notify_one();
        }
    }

    /// Send a call that wants no answer.
    pub(crate) fn send_oneway(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
    ) -> Result<(), Fault> {
        self.lock()
            .start_call(target, method, payload, &refs, (None, None))?;
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Handle one frame of a reader's batch. `wakers` is scratch space (kept by the reader so
    /// that waking callers allocates nothing).
    fn handle_frame(
        self: &Arc<Self>,
        frame: Bytes,
        wakers: &mut Vec<Waker>,
    ) -> Result<(), ProtocolError> {
        if crate::message::is_answer(&frame) {
            return self.handle_answer(frame, wakers);
        }
        let mut broker = self.lock();
        // Calls that handlers polled inline make now leave with the reader's flush.
        broker.in_batch = true;
        // A frame yields at most one call, handed back directly.
        let result = broker.handle_frame(frame, &self.make_import());
        broker.take_wakers(wakers);
        let queued = broker.queued_bytes();
        let revoked = broker.take_revoked();
        let dead = broker.take_graveyard();
        drop(broker);
        drop(dead);
        // Callers whose answers arrived; they run once the reader yields.
        if !wakers.is_empty() {
            for w in wakers.drain(..) {
                w.wake();
            }
        }
        let result = result.map(|call| {
            if let Some(ev) = call {
                self.spawn_call(ev);
            }
        });
        // Outside our lock: revoking reaches into other connections.
        if !revoked.is_empty() {
            for imp in revoked {
                imp.revoke();
            }
        }
        // Answers given inline count at once, so a batch of calls cannot queue without bound.
        self.note_queued(queued);
        // No writer wake-up: the reader flushes once it has handled every frame it has.
        result
    }

    /// Handle an answer or a fault for one of our calls: its caller is woken (once the lock
    /// is released); no handler runs and nothing is queued for the peer.
    fn handle_answer(
        self: &Arc<Self>,
        frame: Bytes,
        wakers: &mut Vec<Waker>,
    ) -> Result<(), ProtocolError> {
        let (result, dead) = {
            let mut broker = self.lock();
            let result = broker.handle_frame(frame, &self.make_import());
            broker.take_wakers(wakers);
            (result, broker.take_graveyard())
        };
        // An answer nobody waits for any more is dropped here, outside the lock.
        drop(dead);
        for w in wakers.drain(..) {
            w.wake();
        }
        // Answers and faults carry no call to run; were one to, it runs as any other.
        result.map(|call| {
            if let Some(ev) = call {
                self.spawn_call(ev);
            }
        })
    }

    fn spawn_call(self: &Arc<Self>, ev: CallEvent) {
        let CallEvent {
            id,
            target,
            object,
            body,
            method,
            args_at,
            refs,
            answer,
            deadline,
        } = ev;
        let span = tracing::debug_span!(
            "pb.call",
            direction = "in",
            connection = self.id,
            peer = tracing::field::Empty,
            request_id = id,
            object = target,
            method =
                std::str::from_utf8(body.get(method.clone()).unwrap_or_default()).unwrap_or(""),
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = (!span.is_disabled()).then(|| {
            if let Some(addr) = self.peer_addr {
                span.record("peer", tracing::field::display(addr));
            }
            std::time::Instant::now()
        });
        let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
        let caller = Caller {
            conn: Some(Connection {
                shared: self.clone(),
            }),
            deadline,
        };
        let call = IncomingCall {
            body,
            method: MethodName::InBody(method),
            args_at,
            refs,
            caller,
        };
        let mut fut = CatchUnwind(object.into_dispatch(call));
        // Without a deadline, poll the handler once right here: most answer without waiting,
        // and then the call costs no task, no wake-up, no cancellation channel and no running
        // entry, and its answer leaves with the reader's next flush. A handler that must wait
        // continues in a task of its own, which polls it again at once (so the no-op waker of
        // this first poll is never relied upon).
        if deadline.is_none() {
            let polled = {
                let _entered = span.enter();
                Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop()))
            };
            if let Poll::Ready(reply) = polled {
                if let Some(started) = started {
                    span.record("outcome", outcome_name(Some(&reply)));
                    span.record("duration_us", started.elapsed().as_micros() as u64);
                }
                self.finish(id, answer, Some(reply), false);
                return;
            }
        }
        // The handler waits: it continues in a task of its own.
        let conn = self.clone();
        let cancel = if answer {
            let Some(cancel) = conn.lock().watch_cancel(id) else {
                // Closed meanwhile: drop the handler.
                conn.finish(id, answer, None, false);
                return;
            };
            Some(cancel)
        } else {
            None
        };
        // The handler runs under its caller's deadline (its own calls inherit it) and is
        // dropped when the deadline passes: the caller has given up by then. That wrapping
        // (a timer and a scope) is boxed, so that the task of a handler without a deadline
        // stays small: tokio copies the whole future into the task when it is spawned.
        let CatchUnwind(handler) = fut;
        let fut = CatchUnwind(match deadline {
            Some(d) => Box::pin(crate::deadline::maybe_scope(Some(d), async move {
                tokio::time::timeout_at(d, handler)
                    .await
                    .unwrap_or_else(|_| Err(deadline_fault()))
            })) as BoxFuture<Reply>,
            None => handler,
        });
        tokio::spawn(
            async move {
                let reply = match cancel {
                    Some(mut cancelled) => tokio::select! {
                        biased;
                        r = fut => Some(r),
                        _ = &mut cancelled => None,
                    },
                    None => Some(fut.await),
                };
                if let Some(started) = started {
                    let span = tracing::Span::current();
                    span.record("outcome", outcome_name(reply.as_ref()));
                    span.record("duration_us", started.elapsed().as_micros() as u64);
                }
                conn.finish(id, answer, reply, answer);
                conn.wake_writer.notify_one();
            }
            .instrument(span),
        );
    }

    /// Book the end of incoming call `id` and queue its answer (`None`: cancelled). `tracked`:
    /// the call ran in a task of its own and is in the broker's running table.
    fn finish(&self, id: u64, answer: bool, reply: Option<Reply>, tracked: bool) {
        if let Some(Err(f)) = &reply
            && !answer
        {
            tracing::debug!(id, message = %f.message, "one-way call failed");
        }
        let (draining, dead) = {
            let mut broker = self.lock();
            broker.finish_call(id, answer, reply, tracked);
            (
                broker.state != crate::broker::State::Open,
                broker.take_graveyard(),
            )
        };
        // What the answer released is dropped outside the lock.
        drop(dead);
        // Only a graceful close waits for running calls, and it starts by draining.
        if draining {
            self.call_done.notify_waiters();
        }
    }

    /// Fold queued releases into the broker and lock it, for taking its output.
    fn lock_for_transmit(&self) -> MutexGuard<'_, Broker> {
        // A release queued after the flag was read sets it again and wakes the writer.
        let mut released = if self.releases_queued.load(Ordering::Acquire)
            && self.releases_queued.swap(false, Ordering::AcqRel)
        {
            std::mem::take(&mut *self.releases.lock().unwrap_or_else(|p| p.into_inner()))
        } else {
            Vec::new()
        };
        let mut broker = self.lock();
        for &(id, generation, count) in &released {
            broker.release_imported(id, generation, count);
        }
        if released.capacity() > 0 && released.capacity() <= crate::broker::KEEP_RELEASES {
            // The list goes back, emptied, so the queue keeps its capacity from batch to batch
            // (unless releases were queued meanwhile in a list of their own, or a burst made
            // it large).
            released.clear();
            let mut queue = self.releases.lock().unwrap_or_else(|p| p.into_inner());
            if queue.capacity() == 0 {
                *queue = released;
            }
        }
        broker
    }

    /// Append everything queued for the peer to `into`.
    #[cfg(test)]
    fn take_transmit(&self, into: &mut Vec<Bytes>) {
        self.lock_for_transmit().take_transmit(into);
    }

    /// Move everything the broker queued into the write queue, counting it as unsent; returns
    /// how many bytes moved.
    fn collect_output(&self, out: &mut Output) -> usize {
        // Written chunks at the front are dropped once they are most of the queue, so a queue
        // that never empties does not grow without end.
        if out.first >= out.queue.len() {
            out.queue.clear();
            out.first = 0;
        } else if out.first >= 64 && out.first * 2 >= out.queue.len() {
            out.queue.drain(..out.first);
            out.first = 0;
        }
        let added = self
            .lock_for_transmit()
            .take_transmit_to(&mut out.queue, &mut out.tail);
        if added > 0 {
            self.add_unsent(added);
        }
        added
    }

    fn lock_out(&self) -> MutexGuard<'_, Option<Output>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write everything queued, as far as the transport takes it: `Ready` once all of it is
    /// written and flushed, `Pending` when the transport is full (woken through `cx`).
    fn poll_output(&self, out: &mut Output, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What the broker holds is collected once per poll, not again after each write: whoever
        // queues while a write is in progress here either finds the output busy and wakes the
        // writer task, or has woken it already, so nothing is left behind.
        if out.is_empty() {
            self.collect_output(out);
        }
        loop {
            let Output {
                wr,
                queue,
                first,
                tail,
                ..
            } = &mut *out;
            let pending = queue.get(*first..).unwrap_or_default();
            let mut n = match (pending, tail.is_empty()) {
                ([], true) => return Pin::new(&mut **wr).poll_flush(cx),
                // One chunk (the usual case for small frames): no slice array to fill.
                ([], false) => ready!(Pin::new(&mut **wr).poll_write(cx, tail))?,
                ([one], true) => ready!(Pin::new(&mut **wr).poll_write(cx, one))?,
                _ => {
                    let mut slices = [io::IoSlice::new(&[]); MAX_IOSLICES];
                    let mut count = 0;
                    let tail = (!tail.is_empty()).then_some(&tail[..]);
                    for (slice, chunk) in slices
                        .iter_mut()
                        .zip(pending.iter().map(|c| &c[..]).chain(tail))
                    {
                        *slice = io::IoSlice::new(chunk);
                        count += 1;
                    }
                    ready!(Pin::new(&mut **wr).poll_write_vectored(cx, &slices[..count]))?
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            self.sub_unsent(n);
            while n > 0 {
                let Some(chunk) = queue.get_mut(*first) else {
                    break;
                };
                if n >= chunk.len() {
                    n -= chunk.len();
                    *first += 1;
                } else {
                    bytes::Buf::advance(chunk, n);
                    n = 0;
                }
            }
            while queue.get(*first).is_some_and(|c| c.is_empty()) {
                *first += 1;
            }
            if n >= tail.len() {
                // Kept at the start of its allocation, which the broker gets back whole.
                tail.clear();
            } else if n > 0 {
                bytes::Buf::advance(tail, n);
            }
        }
    }

    /// The reader handled a batch of frames: write what it produced (answers, and calls that
    /// handlers polled inline made), if anything.
    fn end_batch(&self) {
        let mut broker = self.lock();
        broker.in_batch = false;
        if !broker.has_transmit() {
            return;
        }
        // The output is taken under this lock, not collected under a second one.
        let taken = self.take_output(&mut broker);
        drop(broker);
        match taken {
            Some((out, added)) => {
                self.add_unsent(added);
                self.write_now(out);
            }
            None => self.flush_now(),
        }
    }

    /// Write queued output now, from the calling task, without waiting: saves the hop through
    /// the writer task when the transport has room, which it nearly always has. Whatever cannot
    /// be written at once (the transport is full, or another task is writing) is left to the
    /// writer task.
    fn flush_now(&self) {
        let Ok(mut guard) = self.out.try_lock() else {
            // Someone is writing; the writer task picks up what we queued.
            self.wake_writer.notify_one();
            return;
        };
        let Some(out) = guard.as_mut() else { return };
        if !out.is_empty() || out.writer_waiting {
            // A write (or a flush: a buffering transport such as TLS takes a write whole and
            // makes the flush wait) is waiting for the transport; its waker belongs to the
            // writer task, and a poll with our no-op waker would replace it. What the broker
            // queued meanwhile joins the queue, so it counts as unsent.
            self.collect_output(out);
            drop(guard);
            self.wake_writer.notify_one();
            return;
        }
        self.write_now(guard);
    }

    /// Write from the output, whose lock the caller took while no write was waiting for the
    /// transport: as far as the transport takes it, the rest left to the writer task.
    fn write_now(&self, mut guard: MutexGuard<'_, Option<Output>>) {
        let Some(out) = guard.as_mut() else { return };
        // A no-op waker is enough: on `Pending` the writer task takes over with its own.
        match self.poll_output(out, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                drop(guard);
                self.wake_writer.notify_one();
            }
            Poll::Ready(Err(e)) => {
                drop(guard);
                self.close(CloseReason::Io(e.to_string()));
            }
        }
    }

    /// For a caller that writes its own call ([`Flush::Caller`]), or the reader at the end of
    /// its batch, holding the broker's lock: the output with what the broker queued moved into
    /// it, if no write is in progress or waiting, and the bytes moved (to count as unsent once
    /// the broker's lock is released). Saves the write path locking the broker again.
    fn take_output<'a>(
        &'a self,
        broker: &mut Broker,
    ) -> Option<(MutexGuard<'a, Option<Output>>, usize)> {
        // `try_lock`: whoever holds the output may be waiting for the broker's lock.
        let mut guard = self.out.try_lock().ok()?;
        let out = guard.as_mut()?;
        if !out.is_empty() || out.writer_waiting {
            return None;
        }
        out.queue.clear();
        out.first = 0;
        let added = broker.take_transmit_to(&mut out.queue, &mut out.tail);
        Some((guard, added))
    }

    /// The writer is waiting for the transport: `Ready` with the reason to close once more
    /// than `max_unsent` bytes waited and none went out for `after`.
    fn poll_stall(
        &self,
        stall: &mut Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
        after: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<CloseReason> {
        loop {
            let written = self.bytes_out.load(Ordering::Relaxed);
            let (timer, mark) =
                stall.get_or_insert_with(|| (Box::pin(tokio::time::sleep(after)), written));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if written == *mark && self.is_congested() {
                return Poll::Ready(CloseReason::WriteStalled(after));
            }
            // Progress, or little waiting: watch the next period.
            *mark = written;
            timer.as_mut().reset(tokio::time::Instant::now() + after);
        }
    }

    /// Count what the broker queued as unsent without writing it; the writer task writes it.
    fn collect_now(&self) {
        if let Ok(mut guard) = self.out.try_lock()
            && let Some(out) = guard.as_mut()
        {
            let moved = self.collect_output(out) > 0;
            drop(guard);
            // The broker no longer shows this output, so a flush that looks there (the end of
            // the reader's batch) would miss it: the writer task sends it.
            if moved {
                self.wake_writer.notify_one();
            }
        }
    }

    /// Withdraw export `object` from the peer (it forwarded to something now unreachable).
    pub(crate) fn revoke_export(&self, object: u64) {
        let held = self.lock().revoke_export(object);
        drop(held);
        self.wake_writer.notify_one();
    }

    /// The fault of a call that fails because the connection has ended.
    pub(crate) fn close_fault(&self) -> Fault {
        match self.close_reason.get() {
            Some(reason) => fault_of(reason),
            None => disconnected_fault(),
        }
    }

    /// Mark the connection closed and fail everything pending. Only the first close does
    /// anything (the reader, seeing a local close, calls it again).
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        let mut wakers = Vec::new();
        let (held, imports) = {
            let mut broker = self.lock();
            let closed = broker.close(fault_of(&reason));
            broker.take_wakers(&mut wakers);
            closed
        };
        drop(held);
        // Callers still waiting find their calls gone, and fail with the close's fault.
        for w in wakers {
            w.wake();
        }
        // Every reference imported on this connection is dead; forwards of them that we
        // export to other peers are revoked there.
        for imp in &imports {
            imp.revoke();
        }
        drop(imports);
        let _ = self.close_reason.set(reason);
        self.is_closed.store(true, Ordering::Release);
        self.closed.notify_waiters();
        self.peer_hello.notify_waiters();
        self.end_output();
        // Callers waiting for output space give up now. Only a congested output has any: they
        // wait only after seeing it congested, and its end wakes them.
        if self.is_congested() {
            self.space.notify_waiters();
        }
    }

    /// After the close: write what is left, then shut the write half down. Done here when the
    /// writer task never started, nothing is left and the transport shuts down at once (TCP
    /// does), so a short connection never starts the task; by the writer task otherwise.
    fn end_output(&self) {
        if !self.wake_writer.is_started()
            && let Ok(mut guard) = self.out.try_lock()
            && let Some(out) = guard.as_mut()
        {
            self.collect_output(out);
            if out.is_empty()
                && Pin::new(&mut *out.wr)
                    .poll_shutdown(&mut Context::from_waker(Waker::noop()))
                    .is_ready()
            {
                *guard = None;
                return;
            }
        }
        self.wake_writer.notify_one();
    }

    fn stats(&self) -> TableStats {
        // Fold in queued releases so the counts are exact; the writer sends them.
        let released =
            std::mem::take(&mut *self.releases.lock().unwrap_or_else(|p| p.into_inner()));
        let any = !released.is_empty();
        let stats = {
            let mut broker = self.lock();
            for (id, generation, count) in released {
                broker.release_imported(id, generation, count);
            }
            broker.stats()
        };
        if any {
            self.wake_writer.notify_one();
        }
        stats
    }
}

/// How a call ended, for tracing.
fn outcome_name(reply: Option<&Reply>) -> &'static str {
    match reply {
        None => "cancelled",
        Some(Ok(o)) if o.ok => "ok",
        Some(Ok(_)) => "error",
        Some(Err(f)) => match f.kind {
            FaultKind::NoSuchObject => "no_such_object",
            FaultKind::NoSuchMethod => "no_such_method",
            FaultKind::BadArguments => "bad_arguments",
            FaultKind::BadAnswer => "bad_answer",
            FaultKind::LimitExceeded => "limit_exceeded",
            FaultKind::ShuttingDown => "shutting_down",
            FaultKind::Refused => "refused",
            FaultKind::Disconnected => "disconnected",
            FaultKind::DeadlineExceeded => "deadline_exceeded",
            FaultKind::Handshake => "handshake",
            // Internal, Unknown, and kinds added to the wire later.
            _ => "internal",
        },
    }
}

/// What calls that fail because the connection ended for `reason` report.
fn fault_of(reason: &CloseReason) -> Fault {
    match reason {
        CloseReason::Handshake(e) => Fault {
            kind: FaultKind::Handshake,
            message: e.to_string(),
        },
        _ => disconnected_fault(),
    }
}

/// The fault of a call whose deadline passed (or had passed when it was made).
pub(crate) fn deadline_fault() -> Fault {
    Fault {
        kind: FaultKind::DeadlineExceeded,
        message: "the call's deadline passed".into(),
    }
}

/// The wait for the answer to our call `id`, read from the call's slot in the broker's pending
/// table. Dropped before the answer arrives, it cancels the call.
struct Answer<'a> {
    conn: &'a ConnShared,
    id: u64,
    done: bool,
    /// Not polled yet. The first poll is made in the same task poll that started the call
    /// with this task's waker in the slot: nothing to look at or leave there yet.
    first: bool,
}

impl Future for Answer<'_> {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        if std::mem::take(&mut self.first) {
            return Poll::Pending;
        }
        let reply = ready!(self.conn.lock().poll_answer(self.id, cx.waker()));
        self.done = true;
        Poll::Ready(reply)
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if !self.done {
            // An answer that arrived meanwhile is dropped here, outside the lock.
            let unwanted = self.conn.lock().cancel_call(self.id);
            drop(unwanted);
            self.conn.wake_writer.notify_one();
        }
    }
}

/// Turns a panic in a handler into an internal-error reply, so the caller gets an answer and
/// the connection's books stay balanced.
struct CatchUnwind<F>(F);

impl<F: Future<Output = Reply> + Unpin> Future for CatchUnwind<F> {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(p) => p,
            Err(_) => {
                tracing::error!("a call handler panicked");
                Poll::Ready(Err(Fault {
                    kind: FaultKind::Internal,
                    message: "the handler failed".into(),
                }))
            }
        }
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
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.conn {
            Some(c) => write!(f, "Caller(connection {})", c.id()),
            None => f.write_str("Caller(local)"),
        }
    }
}

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

/// A pb connection: symmetric, either side may call objects the other gave it.
///
/// Cheap to clone. The connection stays open until [`Connection::close`] is called, the peer
/// closes it, or it fails; dropping the handles does not close it while the peer keeps it open.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<ConnShared>,
}

impl Connection {
    pub(crate) fn from_shared(shared: Arc<ConnShared>) -> Connection {
        Connection { shared }
    }

    /// Run the handshake over `io` and start the connection's tasks.
    ///
    /// Waits for the peer's hello (at most `Config::handshake_timeout`): a refused hello is this
    /// function's error. The dialing side ([`Side::Client`]) sends its hello first; the
    /// accepting side answers once the dialer's has arrived (every pb dialer sends its hello
    /// without waiting), in the same write as its first answer, and sends it even when it
    /// refuses the dialer's, so that both sides can tell why. `root` is the object the peer
    /// reaches as its root (`None` to serve nothing). A dialing side that wants its first call
    /// to leave at once uses [`Connection::dial`].
    pub async fn establish<T>(
        io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
    ) -> Result<Connection, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let established = Self::handshake(io, config, side, root, peer_addr, true).await?;
        Ok(established.0)
    }

    /// As [`Connection::establish`], but the connection's reader is returned instead of
    /// spawned: the connection reads from the peer (and so answers its calls, and notices
    /// that it closed) only while the caller runs it. It completes once the connection has
    /// closed. A server runs it in the task it already has for the connection, which spares a
    /// task per connection. Our hello (a server's answer to the dialer's) does not wait for
    /// the reader to run: it is written before this returns, unless the peer sent a frame with
    /// its hello (as [`Connection::dial`] does), which the reader's first batch answers, our
    /// hello in the same write.
    ///
    /// ```
    /// use pb_core::{Config, Connection, Side};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), pb_core::ConnectError> {
    /// let (a, b) = pb_core::transport::memory_pair();
    /// let config = Config::default();
    /// let (server, client) = tokio::join!(
    ///     Connection::establish_with_reader(a, &config, Side::Server, None, None),
    ///     Connection::establish(b, &config, Side::Client, None, None),
    /// );
    /// let ((server, reader), client) = (server?, client?);
    /// // The task that accepted the connection runs its reader until the connection ends.
    /// let serving = tokio::spawn(reader);
    /// client.close().await;
    /// serving.await.expect("the reader ends once the peer has closed");
    /// assert!(server.close_reason().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn establish_with_reader<T>(
        io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
    ) -> Result<(Connection, ConnectionReader), ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (conn, reader) = Self::handshake(io, config, side, root, peer_addr, false).await?;
        // Without a reader to spawn, `start` hands it back (always, for a transport it split).
        Ok((
            conn,
            reader.unwrap_or_else(|| Box::pin(std::future::ready(()))),
        ))
    }

    /// `establish`, spawning the reader or handing it back.
    async fn handshake<T>(
        mut io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
        spawn: bool,
    ) -> Result<(Connection, Option<ConnectionReader>), ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let plain = Hello::ours(config.features);
        let ours = plain.with_limits(config.limits.receive());
        // The reader keeps this much room before each read anyway.
        let mut rbuf = BytesMut::with_capacity(MIN_READ);
        let exchange = async {
            if side == Side::Client {
                io.write_all(hello_frame(&ours).as_slice()).await?;
                io.flush().await?;
            }
            read_hello(&mut io, &mut rbuf, &ours).await
        };
        let theirs = match tokio::time::timeout(config.handshake_timeout, exchange).await {
            Ok(Ok(theirs)) => theirs,
            Ok(Err(e)) => {
                if side == Side::Server {
                    // The hello every build reads, so that the dialer can tell why.
                    let _ = io.write_all(hello_frame(&plain).as_slice()).await;
                    let _ = io.flush().await;
                }
                let _ = io.shutdown().await;
                return Err(e);
            }
            Err(_) => return Err(ConnectError::Timeout(config.handshake_timeout)),
        };
        // Our limits go only to a dialer whose hello carried its own: builds from before
        // limits were carried refuse a hello longer than 16 bytes.
        let answer =
            (side == Side::Server).then_some(if theirs.limits.is_some() { ours } else { plain });
        Ok(Connection::start(
            io,
            config,
            side,
            root,
            peer_addr,
            rbuf,
            (answer, Some(theirs)),
            None,
            spawn,
        ))
    }

    /// Start a connection as the side that dialed, without waiting for the peer's hello.
    ///
    /// Our hello is queued as the connection's first bytes and the connection is returned at
    /// once, so the first call leaves with the hello, in the same write: connecting and one
    /// call cost one round trip, not two. The reader checks the peer's hello before any other
    /// frame. If the peer refuses ours or sends a bad one (another protocol version, not pb at
    /// all), the connection closes with [`CloseReason::Handshake`], and calls made before or
    /// after fail with [`CallError::Handshake`](crate::CallError::Handshake), which names the
    /// handshake error; a peer that sends no hello within `Config::handshake_timeout` closes it
    /// with [`CloseReason::IdleTimeout`]. [`Connection::closed`] and
    /// [`Connection::close_reason`] report it too.
    ///
    /// The peer's side is unchanged: any peer that runs [`Connection::establish`] accepts a
    /// dialed connection. The error is only an `Err` of this function if the transport fails
    /// while the hello is written.
    pub async fn dial<T>(
        io: T,
        config: &Config,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
    ) -> Result<Connection, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let ours = Hello::ours(config.features).with_limits(config.limits.receive());
        // The reader keeps this much room before each read anyway.
        let rbuf = BytesMut::with_capacity(MIN_READ);
        let (conn, _) = Connection::start(
            io,
            config,
            Side::Client,
            root,
            peer_addr,
            rbuf,
            (Some(ours), None),
            Some(ours),
            true,
        );
        Ok(conn)
    }

    /// Start the connection's tasks. `send` is our hello, queued as the first bytes, if it is
    /// still to be sent, and `theirs` the peer's, if it has arrived; with `check`, the reader
    /// checks the peer's before any frame. Without `spawn`, the reader is returned for the
    /// caller to run.
    #[allow(clippy::too_many_arguments)]
    fn start<T>(
        io: T,
        config: &Config,
        side: Side,
        root: Option<ObjectRef>,
        peer_addr: Option<SocketAddr>,
        rbuf: BytesMut,
        (send, theirs): (Option<Hello>, Option<Hello>),
        check: Option<Hello>,
        spawn: bool,
    ) -> (Connection, Option<ConnectionReader>)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = ConnShared::new(config, side, peer_addr, root);
        if let Some(ours) = &send {
            shared.lock().queue_raw(hello_frame(ours).as_slice());
        }
        if let Some(theirs) = &theirs {
            shared.peer_hello(theirs);
        }
        let decoder = FrameDecoder::new(config.limits.receive().max_frame_len);
        // A frame that came with the peer's hello (a dialer's first call) is answered by the
        // reader's first batch, which our hello then leaves with.
        let frame_waiting = rbuf.get(..HEADER_LEN).is_some_and(|h| {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            rbuf.len() - HEADER_LEN >= len
        });
        let timers = Timers {
            keepalive: config.keepalive_interval,
            idle: config.idle_timeout,
            hello: None,
        };
        let span = tracing::debug_span!(
            "pb.connection",
            connection = shared.id,
            side = ?side,
            peer = ?peer_addr,
        );
        let tasks = Tasks {
            rbuf,
            decoder,
            timers,
            span,
            check,
            handshake_timeout: config.handshake_timeout,
            spawn,
        };
        // TCP splits into owned halves; any other transport goes through `tokio::io::split`,
        // whose halves share a lock taken on every read and write.
        let mut io = Some(io);
        let tcp = (&mut io as &mut dyn Any)
            .downcast_mut::<Option<tokio::net::TcpStream>>()
            .and_then(Option::take);
        let mut reader = None;
        if let Some(tcp) = tcp {
            let (rd, wr) = tcp.into_split();
            reader = tasks.start(&shared, rd, Box::new(wr));
        } else if let Some(io) = io {
            let (rd, wr) = tokio::io::split(io);
            reader = tasks.start(&shared, rd, Box::new(wr));
        }
        // A reader handed back runs when its caller gets to it, maybe only after waiting for
        // the peer, which may be waiting for our hello: unless a frame already came with the
        // peer's (then the peer does not wait for ours), it leaves now, not with the reader's
        // first batch.
        if reader.is_some() && send.is_some() && !frame_waiting {
            shared.flush_now();
        }
        tracing::debug!(
            connection = shared.id,
            ?side,
            ?peer_addr,
            "connection established"
        );
        (Connection { shared }, reader)
    }

    /// The peer's root object, typed.
    pub fn root<R: Remote>(&self) -> R {
        R::from_object_ref(self.shared.root_ref())
    }

    /// The peer's root object, untyped.
    pub fn root_ref(&self) -> ObjectRef {
        self.shared.root_ref()
    }

    /// Replace the object we serve as our root; returns the previous one.
    pub fn set_root(&self, root: Option<ObjectRef>) -> Option<ObjectRef> {
        self.shared.lock().set_root(root)
    }

    /// The nesting-depth limit for values decoded from this connection.
    pub(crate) fn max_depth(&self) -> usize {
        self.shared.max_depth
    }

    /// A process-unique id of this connection.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Which side we are.
    pub fn side(&self) -> Side {
        self.shared.side
    }

    /// The peer's address, when the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared.peer_addr
    }

    /// The connection's live counters: table sizes and bytes in and out.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            tables: self.shared.stats(),
            bytes_in: self.shared.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.shared.bytes_out.load(Ordering::Relaxed),
            unsent_bytes: self.shared.unsent.load(Ordering::Relaxed) as u64,
        }
    }

    /// Change the largest frame accepted and sent (for example after login); never below
    /// [`ReceiveLimits::FLOOR`](crate::handshake::ReceiveLimits::FLOOR). A peer that announced
    /// its own limits in its hello is told at once, so that it may send frames up to the new
    /// limit (and, if it is lower, holds what it sends to it from when it hears of it: frames
    /// already on their way that exceed it close the connection).
    pub fn set_max_frame_len(&self, len: usize) {
        let (len, queued) = {
            let mut broker = self.shared.lock();
            let len = broker.set_max_frame_len(len);
            (len, broker.has_transmit())
        };
        // The reader picks the new limit up before the next frame.
        self.shared.max_frame_len.store(len, Ordering::Relaxed);
        if queued {
            self.shared.wake_writer.notify_one();
        }
    }

    /// Record who the peer is (a login, a certificate, ...). Dispatchers see it through
    /// [`Caller::identity`].
    pub fn set_identity<T: Any + Send + Sync>(&self, identity: T) {
        *self
            .shared
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(identity));
    }

    /// The identity recorded with [`Connection::set_identity`], if it is a `T`.
    pub fn identity<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let id = self
            .shared
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        id.downcast::<T>().ok()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason.get().cloned()
    }

    /// Completes when the connection ends (at once if it has). Every waiter is woken exactly
    /// once per connection.
    pub async fn closed(&self) {
        self.shared.closed().await
    }

    /// Close gracefully: take no new calls, let running calls finish and their answers go out
    /// (up to the drain timeout), then close. Our own pending calls fail with `Disconnected`.
    pub async fn close(&self) {
        let shared = &self.shared;
        // Nothing running (the common case): no goodbye and no drain timer. The end of the
        // stream follows at once and tells the peer; a goodbye matters while calls drain, when
        // the peer must stop sending new ones (which fail with `ShuttingDown`, not lost).
        let busy = {
            let mut broker = shared.lock();
            let busy = broker.in_flight() > 0;
            broker.start_draining(busy);
            busy
        };
        if busy {
            shared.wake_writer.notify_one();
            let drained = async {
                loop {
                    let done = shared.call_done.notified();
                    if shared.lock().in_flight() == 0 {
                        break;
                    }
                    done.await;
                }
            };
            let _ = tokio::time::timeout(shared.drain_timeout, drained).await;
        }
        // Marks the connection closed before it returns: nothing to wait for after it.
        shared.close(CloseReason::Local);
    }

    /// Close at once: running calls are cancelled, pending calls fail.
    pub fn abort(&self) {
        self.shared.close(CloseReason::Local);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("side", &self.shared.side)
            .field("peer_addr", &self.shared.peer_addr)
            .finish()
    }
}

/// The reader's timers: when to ping a quiet peer, and when to give up on it (the hello's
/// deadline is added by the reader of a dialed connection).
type Timers = LivenessConfig;

/// The driver's clock as pb-proto's explicit `now` (tokio's clock, so paused time works).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The timer fired: ping, give up, or just re-arm.
fn on_timer(live: &mut Liveness, conn: &ConnShared) -> Result<(), CloseReason> {
    match live.handle_timeout(now()) {
        Some(Timeout::Idle(after)) => Err(CloseReason::IdleTimeout(after)),
        Some(Timeout::Ping(nonce)) => {
            conn.lock().send_ping(nonce);
            conn.wake_writer.notify_one();
            Ok(())
        }
        None => Ok(()),
    }
}

/// A hello as a whole frame, on the stack (it is copied into the output anyway).
struct HelloFrame {
    buf: [u8; HEADER_LEN + HELLO_LIMITS_LEN],
    len: usize,
}

impl HelloFrame {
    fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&self.buf)
    }
}

/// Our hello as a whole frame.
fn hello_frame(ours: &Hello) -> HelloFrame {
    let mut buf = [0u8; HEADER_LEN + HELLO_LIMITS_LEN];
    let body = ours.encoded_len();
    let mut out = &mut buf[..];
    out.put_u32(body as u32);
    ours.encode(&mut out);
    HelloFrame {
        buf,
        len: HEADER_LEN + body,
    }
}

/// Read the peer's hello into `rbuf` and check it against ours; what follows it stays in
/// `rbuf`.
async fn read_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    ours: &Hello,
) -> Result<Hello, ConnectError> {
    loop {
        if let Some(theirs) = take_hello(rbuf, ours)? {
            return Ok(theirs);
        }
        if io.read_buf(rbuf).await? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}

/// Check the peer's hello at the front of `rbuf` against ours and take it out: `None` while
/// more bytes are needed to tell.
fn take_hello(rbuf: &mut BytesMut, ours: &Hello) -> Result<Option<Hello>, HandshakeError> {
    // Check the header and then the magic as soon as each is in, so a non-pb peer is told
    // apart early; the body may be incomplete until then: never index into it.
    let Some(&[l0, l1, l2, l3]) = rbuf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    // Report the four bytes where the magic should be, or the first four if even the header
    // is not a hello's.
    let bad_magic = |at: usize| {
        let mut magic = [0u8; 4];
        for (m, b) in magic.iter_mut().zip(rbuf.iter().skip(at)) {
            *m = *b;
        }
        HandshakeError::BadMagic { magic }
    };
    if !(HELLO_LEN..=HELLO_MAX_LEN).contains(&len) {
        return Err(bad_magic(0));
    }
    if rbuf
        .get(HEADER_LEN..HEADER_LEN + 4)
        .is_some_and(|m| m != crate::handshake::MAGIC)
    {
        return Err(bad_magic(HEADER_LEN));
    }
    let Some(body) = rbuf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let theirs = Hello::decode(body)?;
    let _features = ours.negotiate(&theirs)?;
    bytes::Buf::advance(rbuf, HEADER_LEN + len);
    Ok(Some(theirs))
}

/// The reader task. With `check` (our hello and the handshake timeout, on a dialed
/// connection), the peer's hello is checked before any frame, within the timeout: the
/// keep-alive timer keeps that deadline too, so the wait for the hello costs no timer or task
/// of its own.
async fn run_reader<R: AsyncRead + Unpin>(
    conn: Arc<ConnShared>,
    mut rd: R,
    mut rbuf: BytesMut,
    mut decoder: FrameDecoder,
    timers: Timers,
    check: Option<(Hello, Duration)>,
) {
    // One wait for a local close, made once: polling it again is cheap, making it is not.
    let closed = conn.closed();
    tokio::pin!(closed);
    let hello = check.map(|(_, timeout)| timeout);
    let mut live = Liveness::new(LivenessConfig { hello, ..timers }, now());
    let mut check = check.map(|(ours, _)| ours);
    let mut wakers = Vec::new();
    let timer = tokio::time::sleep_until(live.poll_timeout().into());
    tokio::pin!(timer);
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    let mut known_task = None;
    let mut held = Held::default();
    // Our hello may wait in the output (the writer task starts only when needed): it leaves
    // after the first batch at the latest, with that batch's answers.
    let mut first = true;
    let reason = 'conn: loop {
        if let Some(ours) = &check {
            match take_hello(&mut rbuf, ours) {
                Ok(Some(theirs)) => {
                    check = None;
                    live.handle_hello(now());
                    // Our limits, if they changed since our hello left, go out with the
                    // batch's flush, or the writer's if no frame follows.
                    if conn.peer_hello(&theirs) {
                        conn.wake_writer.notify_one();
                    }
                }
                Ok(None) => {}
                Err(e) => break 'conn CloseReason::Handshake(e),
            }
        }
        let mut any_frame = false;
        let mut handled = false;
        // No frame is taken before the peer's hello.
        while check.is_none() {
            decoder.set_max_len(conn.max_frame_len.load(Ordering::Relaxed));
            match decoder.decode(&mut rbuf) {
                Ok(Some(frame)) => {
                    // One clock reading per batch, not per frame: they arrived together.
                    if !any_frame {
                        any_frame = true;
                        live.handle_frame(now());
                    }
                    // While the peer is not taking our output, its calls (and everything that
                    // must stay in line with them) wait: running them would queue more.
                    if (!held.frames.is_empty() || conn.is_congested())
                        && !crate::message::may_overtake(&frame)
                    {
                        held.push(frame);
                        continue;
                    }
                    // Answers queue nothing: a batch of them alone needs no flush.
                    handled |= !crate::message::is_answer(&frame);
                    if let Err(e) = conn.handle_frame(frame, &mut wakers) {
                        break 'conn CloseReason::Protocol(e.to_string());
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn CloseReason::Protocol(e.to_string()),
            }
        }
        // Held-back frames run, in order, as soon as the output has drained.
        while !held.frames.is_empty() && !conn.is_congested() {
            let Some(frame) = held.pop() else { break };
            handled = true;
            if let Err(e) = conn.handle_frame(frame, &mut wakers) {
                break 'conn CloseReason::Protocol(e.to_string());
            }
        }
        // Answers and faults for the whole batch go out in one write.
        if handled || std::mem::take(&mut first) {
            conn.end_batch();
        }
        if conn.is_closed() {
            break CloseReason::Local;
        }
        // Reading stops only when the peer sends on and on without reading: once more of its
        // calls are held back than may run at once here (`max_in_flight_calls`), which a peer
        // within that limit never reaches, so two pb peers never both stop reading. Other
        // frames (releases, pings, cancels) get as many places again. Held frames thus cost
        // at most about what running calls may cost anyway.
        let paused = held.calls > conn.max_held_frames
            || held.frames.len() - held.calls > conn.max_held_frames;
        let mut roomy = false;
        let event = {
            let drained = conn.drained.notified();
            tokio::pin!(drained);
            std::future::poll_fn(|cx| {
                // The close signal and the timer are polled only after they woke us, not on
                // every read: most wake-ups are data.
                if side.take(cx.waker(), &mut known_task) {
                    let mut side_cx = Context::from_waker(&side_waker);
                    if closed.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(ReaderEvent::Closed);
                    }
                    if live.is_enabled() && timer.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(ReaderEvent::Timer);
                    }
                }
                if !held.frames.is_empty() && drained.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(ReaderEvent::Drained);
                }
                if !paused {
                    // Frames held at the first attempt (answers whose callers have not run
                    // yet) are usually gone by the next: room is made again then.
                    if !roomy {
                        roomy = decoder.prepare_read(&mut rbuf);
                    }
                    let read = rd.read_buf(&mut rbuf);
                    tokio::pin!(read);
                    if let Poll::Ready(r) = read.poll(cx) {
                        return Poll::Ready(ReaderEvent::Read(r));
                    }
                }
                Poll::Pending
            })
            .await
        };
        match event {
            ReaderEvent::Read(Ok(0)) => break CloseReason::PeerClosed,
            ReaderEvent::Read(Ok(n)) => {
                conn.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            ReaderEvent::Read(Err(e)) => break CloseReason::Io(e.to_string()),
            ReaderEvent::Closed => break CloseReason::Local,
            ReaderEvent::Drained => {}
            ReaderEvent::Timer => {
                if paused {
                    // Not reading is our choice, not the peer's silence; a peer that reads
                    // nothing is cut by `write_stall_timeout`.
                    live.handle_frame(now());
                }
                if let Err(reason) = on_timer(&mut live, &conn) {
                    break reason;
                }
                timer.as_mut().reset(live.poll_timeout().into());
                // The reset timer must be polled again to be armed.
                side.force();
            }
        }
    };
    match &reason {
        CloseReason::Protocol(why) => {
            tracing::warn!(connection = conn.id, peer = ?conn.peer_addr, %why, "closing connection: protocol violation")
        }
        CloseReason::Io(why) => tracing::debug!(connection = conn.id, %why, "connection failed"),
        CloseReason::IdleTimeout(after) if check.is_some() => {
            tracing::warn!(connection = conn.id, peer = ?conn.peer_addr, ?after, "closing connection: pb handshake failed: no hello within handshake_timeout")
        }
        CloseReason::Handshake(e) => {
            tracing::warn!(connection = conn.id, peer = ?conn.peer_addr, error = %e, "closing connection: pb handshake failed")
        }
        CloseReason::IdleTimeout(after) => {
            tracing::info!(connection = conn.id, peer = ?conn.peer_addr, ?after, "closing connection: no frame from the peer within idle_timeout")
        }
        _ => tracing::debug!(connection = conn.id, ?reason, "connection closed"),
    }
    conn.close(reason);
}

/// What a connection's reader and writer tasks start with.
struct Tasks {
    /// Bytes read after the peer's hello (or before it, with `check`).
    rbuf: BytesMut,
    decoder: FrameDecoder,
    timers: Timers,
    span: tracing::Span,
    /// Our hello, when the reader has to check the peer's before any frame.
    check: Option<Hello>,
    handshake_timeout: Duration,
    /// Spawn the reader, or return it.
    spawn: bool,
}

impl Tasks {
    fn start<R: AsyncRead + Send + Unpin + 'static>(
        self,
        shared: &Arc<ConnShared>,
        rd: R,
        wr: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Option<ConnectionReader> {
        *shared.lock_out() = Some(Output {
            wr,
            queue: Vec::new(),
            first: 0,
            tail: BytesMut::new(),
            writer_waiting: false,
        });
        let Tasks {
            rbuf,
            decoder,
            timers,
            span,
            check,
            handshake_timeout,
            spawn,
        } = self;
        let check = check.map(|ours| (ours, handshake_timeout));
        let reader =
            run_reader(shared.clone(), rd, rbuf, decoder, timers, check).instrument(span.clone());
        shared.wake_writer.prepare(shared, span);
        if spawn {
            tokio::spawn(reader);
            None
        } else {
            Some(Box::pin(reader))
        }
    }
}

/// A connection's reader, for the caller to run (see [`Connection::establish_with_reader`]).
pub type ConnectionReader = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What woke the reader.
enum ReaderEvent {
    Read(io::Result<usize>),
    Closed,
    Drained,
    Timer,
}

/// The waker the reader gives its close signal and its timer: it notes that one of them woke
/// the reader, then wakes the reader's task, so the reader polls them only when they may be
/// ready (a poll of each on every read costs more than the read's own bookkeeping).
struct SideWake {
    /// Set by a wake-up, taken by the reader's next poll. Starts set: the first poll arms them.
    woken: AtomicBool,
    /// The reader task's waker.
    task: Mutex<Option<Waker>>,
}

impl Default for SideWake {
    fn default() -> Self {
        SideWake {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }
}

impl SideWake {
    /// Whether a wake-up came since the last call. `task` is the reader's waker, passed on by
    /// wake-ups; `known` is the reader's copy of what it gave last (no lock while it is the
    /// same).
    fn take(&self, task: &Waker, known: &mut Option<Waker>) -> bool {
        if !known.as_ref().is_some_and(|w| w.will_wake(task)) {
            *known = Some(task.clone());
            *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.clone());
        }
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }

    /// Have the next poll look at the close signal and the timer.
    fn force(&self) {
        self.woken.store(true, Ordering::Release);
    }
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// Wakes the connection's writer task, and starts it on the first wake-up: most output is
/// written directly (by callers and the reader), so a short connection never needs the task,
/// and never pays for spawning it.
#[derive(Default)]
struct WriterWake {
    notify: Notify,
    /// Set once the task is started (or can no longer be).
    started: AtomicBool,
    /// What starting the task takes, from the connection's start until the task starts.
    start: Mutex<Option<(Weak<ConnShared>, tokio::runtime::Handle, tracing::Span)>>,
}

impl WriterWake {
    /// Record what the writer task will run on (the current runtime) and in which span.
    fn prepare(&self, conn: &Arc<ConnShared>, span: tracing::Span) {
        let handle = tokio::runtime::Handle::current();
        *self.start.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Arc::downgrade(conn), handle, span));
    }

    fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Wake the writer task, starting it if it is not running yet.
    fn notify_one(&self) {
        self.notify.notify_one();
        if !self.is_started() {
            self.start();
        }
    }

    fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    #[cold]
    fn start(&self) {
        let start = self.start.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Before `prepare` there is nothing to start yet: the wake-up stays in `notify`.
        let Some((conn, handle, span)) = start else {
            return;
        };
        self.started.store(true, Ordering::Release);
        if let Some(conn) = conn.upgrade() {
            handle.spawn(run_writer(conn).instrument(span));
        }
    }
}

/// Frames the reader holds back while the output is congested.
#[derive(Default)]
struct Held {
    frames: std::collections::VecDeque<Bytes>,
    /// How many of `frames` are calls.
    calls: usize,
}

impl Held {
    fn push(&mut self, frame: Bytes) {
        self.calls += usize::from(crate::message::is_call(&frame));
        self.frames.push_back(frame);
    }

    fn pop(&mut self) -> Option<Bytes> {
        let frame = self.frames.pop_front()?;
        self.calls -= usize::from(crate::message::is_call(&frame));
        Some(frame)
    }
}

impl Output {
    /// Whether everything queued has been written.
    fn is_empty(&self) -> bool {
        self.first >= self.queue.len() && self.tail.is_empty()
    }
}

/// The most chunks handed to one vectored write.
const MAX_IOSLICES: usize = 64;

/// The transport's write half and the chunks of a write in progress.
struct Output {
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    queue: Vec<Bytes>,
    /// The first chunk of `queue` not yet written.
    first: usize,
    /// What goes after the chunks of `queue`: the broker's output buffer itself, exchanged for
    /// this one's emptied allocation when everything before had been written (see
    /// [`Broker::take_transmit_to`]), so a write costs no chunk split off a shared buffer.
    tail: BytesMut,
    /// The writer task's last poll was left waiting for the transport (a write or a flush):
    /// the transport holds the writer's waker, which no other poll may replace.
    writer_waiting: bool,
}

/// Writes whatever the broker queues and nobody wrote directly: output queued by callers
/// (batched: every call started in one scheduler tick goes out in one write), by handlers that
/// finished in their own task, and anything a direct write left behind.
async fn run_writer(conn: Arc<ConnShared>) {
    loop {
        let notified = conn.wake_writer.notified();
        // Armed only once the transport is full, so a healthy connection pays no timer.
        let mut stall: Option<(Pin<Box<tokio::time::Sleep>>, u64)> = None;
        let written = std::future::poll_fn(|cx| {
            let polled = match conn.lock_out().as_mut() {
                Some(out) => {
                    let polled = conn.poll_output(out, cx);
                    out.writer_waiting = polled.is_pending();
                    polled
                }
                None => Poll::Ready(Ok(())),
            };
            if polled.is_pending()
                && let Some(after) = conn.write_stall_timeout
            {
                return conn.poll_stall(&mut stall, after, cx).map(Err);
            }
            polled.map_err(|e| CloseReason::Io(e.to_string()))
        })
        .await;
        if let Err(reason) = written {
            if let CloseReason::WriteStalled(after) = &reason {
                tracing::info!(connection = conn.id, peer = ?conn.peer_addr, ?after, unsent = conn.unsent.load(Ordering::Relaxed), "closing connection: the peer stopped reading (write_stall_timeout)");
            }
            conn.close(reason);
            break;
        }
        if conn.is_closed() {
            break;
        }
        notified.await;
    }
    let out = conn.lock_out().take();
    if let Some(mut out) = out {
        let _ = out.wr.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    //! Two connections' states wired together by hand: no sockets, no sleeps, every frame moved
    //! explicitly.

    use super::*;
    use crate::object::{BoxFuture, Dispatch, Interface, encode_result};

    struct Counter;
    static COUNTER: Interface = Interface {
        name: "Counter",
        methods: &["add", "spawn"],
    };

    impl Dispatch for Counter {
        fn interface(&self) -> &'static Interface {
            &COUNTER
        }
        fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
            Box::pin(async move {
                match call.method() {
                    "add" => {
                        let (a, b): (u32, u32) = call.decode_args()?;
                        encode_result::<u32, ()>(call.caller(), Ok(a + b))
                    }
                    // Returns a reference to a new object.
                    "spawn" => {
                        encode_result::<ObjectRef, ()>(call.caller(), Ok(ObjectRef::local(Counter)))
                    }
                    _ => call.no_such_method(&COUNTER),
                }
            })
        }
    }

    /// Move every queued frame from `from` to `to`; returns how many moved.
    fn pump(from: &Arc<ConnShared>, to: &Arc<ConnShared>, buf: &mut BytesMut) -> usize {
        let decoder = FrameDecoder::new(1 << 20);
        let mut chunks = Vec::new();
        from.take_transmit(&mut chunks);
        for chunk in chunks {
            buf.extend_from_slice(&chunk);
        }
        let mut n = 0;
        let mut wakers = Vec::new();
        while let Ok(Some(frame)) = decoder.decode(buf) {
            to.handle_frame(frame, &mut wakers).expect("valid frame");
            n += 1;
        }
        n
    }

    async fn run_until<T>(
        a: &Arc<ConnShared>,
        b: &Arc<ConnShared>,
        task: tokio::task::JoinHandle<T>,
    ) -> T {
        let (mut ab, mut ba) = (BytesMut::new(), BytesMut::new());
        for _ in 0..1000 {
            if task.is_finished() {
                return task.await.expect("task");
            }
            pump(a, b, &mut ab);
            pump(b, a, &mut ba);
            tokio::task::yield_now().await;
        }
        panic!("did not finish");
    }

    #[tokio::test]
    async fn two_brokers_without_sockets() {
        let config = Config::default();
        let client = ConnShared::new(&config, Side::Client, None, None);
        let server = ConnShared::new(&config, Side::Server, None, Some(ObjectRef::local(Counter)));
        let root = client.root_ref();

        let call = tokio::spawn({
            let root = root.clone();
            async move { root.call::<_, u32, ()>("add", &(40u32, 2u32)).await }
        });
        assert_eq!(run_until(&client, &server, call).await, Ok(42));

        // A returned reference is imported, callable, and released when dropped.
        let spawned = tokio::spawn({
            let root = root.clone();
            async move { root.call::<_, ObjectRef, ()>("spawn", &()).await }
        });
        let child = run_until(&client, &server, spawned).await.expect("spawn");
        assert_eq!(server.stats().exported, 1);
        assert_eq!(client.stats().imported, 1);
        let call = tokio::spawn({
            let child = child.clone();
            async move { child.call::<_, u32, ()>("add", &(1u32, 1u32)).await }
        });
        assert_eq!(run_until(&client, &server, call).await, Ok(2));
        drop(child);
        assert_eq!(client.stats().imported, 0);
        let (mut ab, mut ba) = (BytesMut::new(), BytesMut::new());
        assert_eq!(pump(&client, &server, &mut ab), 1, "one release frame");
        assert_eq!(pump(&server, &client, &mut ba), 0);
        assert_eq!(server.stats().exported, 0);

        // Losing the connection fails what is pending, at once.
        let hanging = tokio::spawn({
            let root = root.clone();
            async move { root.call::<_, u32, ()>("add", &(1u32, 1u32)).await }
        });
        tokio::task::yield_now().await;
        client.close(CloseReason::Local);
        assert_eq!(
            hanging.await.expect("task"),
            Err(crate::CallError::Disconnected)
        );
    }

    /// Hands out the same object every time.
    struct Holder(ObjectRef);
    static HOLDER: Interface = Interface {
        name: "Holder",
        methods: &["get"],
    };

    impl Dispatch for Holder {
        fn interface(&self) -> &'static Interface {
            &HOLDER
        }
        fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply> {
            Box::pin(async move {
                match call.method() {
                    "get" => encode_result::<ObjectRef, ()>(call.caller(), Ok(self.0.clone())),
                    _ => call.no_such_method(&HOLDER),
                }
            })
        }
    }

    #[tokio::test]
    async fn a_release_that_crosses_a_new_send_does_not_free_the_object() {
        let config = Config::default();
        let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        struct Tracked(#[allow(dead_code)] Flag);
        impl Dispatch for Tracked {
            fn interface(&self) -> &'static Interface {
                &COUNTER
            }
            fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply> {
                Box::pin(async move { encode_result::<u8, ()>(call.caller(), Ok(1)) })
            }
        }
        let object = ObjectRef::local(Tracked(Flag(freed.clone())));
        let client = ConnShared::new(&config, Side::Client, None, None);
        let server = ConnShared::new(
            &config,
            Side::Server,
            None,
            Some(ObjectRef::local(Holder(object))),
        );
        let root = client.root_ref();
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());

        // First send: the client holds the object once.
        let get = tokio::spawn({
            let root = root.clone();
            async move { root.call::<_, ObjectRef, ()>("get", &()).await }
        });
        let first = run_until(&client, &server, get).await.expect("get");
        assert_eq!(server.stats().exported, 1);

        // The client asks again; the server answers (count 2), but the answer is still in
        // flight when the client drops its first handle and its release (count 1) goes out.
        let again = tokio::spawn({
            let root = root.clone();
            async move { root.call::<_, ObjectRef, ()>("get", &()).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(pump(&client, &server, &mut to_server), 1, "the call");
        tokio::task::yield_now().await; // the server's handler runs and queues the answer
        drop(first);
        assert_eq!(
            pump(&client, &server, &mut to_server),
            1,
            "the release crosses the answer"
        );
        assert_eq!(server.stats().exported, 1, "count 2 - 1: still exported");
        assert!(
            !freed.load(Ordering::SeqCst),
            "not freed while the peer holds it"
        );
        assert_eq!(
            pump(&server, &client, &mut to_client),
            1,
            "the answer arrives"
        );
        let second = run_until(&client, &server, again).await.expect("get");

        // The new handle works, and dropping it frees the object.
        let call = tokio::spawn({
            let second = second.clone();
            async move { second.call::<_, u8, ()>("ping", &()).await }
        });
        assert_eq!(run_until(&client, &server, call).await, Ok(1));
        drop(second);
        drop(root);
        pump(&client, &server, &mut to_server);
        assert_eq!(server.stats().exported, 0);
        assert_eq!(client.stats().imported, 0);
        drop(server);
        assert!(freed.load(Ordering::SeqCst));
    }
}
