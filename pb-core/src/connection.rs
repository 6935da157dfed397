//! The tokio driver that pumps a [`Broker`] over a transport.
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
//!
//! # Layout
//! This file holds the public settings ([`Side`], [`Config`], [`ConnectError`],
//! [`CloseReason`]) and the state the parts share (`ConnShared`); each part does one job:
//! - `start`: the hello, the accepting and dialing paths, the tasks of a connection;
//! - `call`: our calls, from the caller to the output and the answer back;
//! - `incoming`: the peer's frames handed to the broker, its calls run, the [`Caller`];
//! - `reader`: the read loop, its batches, held-back frames and its timers;
//! - `write`: output accounting, backpressure and who writes;
//! - `liveness`: keep-alive, pb-proto's state machine fed tokio's clock;
//! - `refs`: imported references and their releases;
//! - `close`: the end of a connection;
//! - `events`: what the broker's events make the driver do, outside its lock;
//! - `link`: the object model's [`Link`] (what references, callers and the [`Connection`]
//!   handle ask of a connection), implemented.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::broker::{Broker, CallEvent, Event, Flush, Limits, ProtocolError, TableStats};
use crate::codec::Payload;
use crate::deadline::deadline_fault;
use crate::frame::{Decoded, Frame, FrameDecoder, HEADER_LEN, MIN_READ, Tail};
use crate::handshake::{
    Features, HELLO_LEN, HELLO_MAX_LEN, HELLO_WINDOW_LEN, HandshakeError, Hello,
};
use crate::link::{
    Caller, CloseReason, Connection, ConnectionStats, ExportLink, Imported, Link, LinkFuture,
    PeerRecord, Side,
};
use crate::message::FaultKind;
use crate::object::call::outcome_name;
use crate::object::{BoxFuture, Fault, IncomingCall, MethodName, ObjectRef, RefInner, Reply};
use pb_proto::liveness::{Liveness, LivenessConfig, Timeout};
use pb_proto::message::CallExtras;

mod call;
mod close;
mod events;
mod incoming;
mod link;
mod liveness;
mod reader;
mod refs;
mod start;
#[cfg(test)]
mod tests;
mod write;

// The parts see each other through the parent (each opens with `use super::*`).
pub use self::start::ConnectionReader;
#[allow(unused_imports)]
use self::{
    call::*, close::*, events::*, incoming::*, liveness::*, reader::*, refs::*, start::*, write::*,
};

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Table and message limits.
    pub limits: Limits,
    /// How long the peer has to send its hello (default 10 s); a client's dial (the TCP
    /// connect, and the TLS handshake) is bounded by it too.
    pub handshake_timeout: Duration,
    /// How long a graceful close waits for running calls (default 30 s).
    pub drain_timeout: Duration,
    /// Optional features we offer (default [`Features::TAILS`]: split frames, which let a
    /// large byte string that ends a payload be read into an allocation of its own, where a
    /// `Vec<u8>` is made of it without a copy). ([`Features::LIMITS`] is not one to choose:
    /// our hello always carries our limits.)
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
            features: Features::TAILS,
            keepalive_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(60)),
            write_stall_timeout: Some(pb_proto::limits::DEFAULT_WRITE_STALL_TIMEOUT),
        }
    }
}

/// Establishing a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The handshake failed.
    #[error("pb handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer closed the connection during the handshake.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The peer did not complete the handshake in time.
    #[error("the handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// State shared by a connection's tasks, its handle and every reference into it.
pub(crate) struct ConnShared {
    id: u64,
    /// This connection, for the hooks of objects exported on it (caches send it updates).
    me: Weak<ConnShared>,
    /// The runtime the connection was made on, for work it must start from outside it (a
    /// cache updated from a thread of its own may have to cut the connection).
    runtime: Option<tokio::runtime::Handle>,
    side: Side,
    peer_addr: Option<SocketAddr>,
    /// Boxed: with the broker in it, this state would be larger than the allocator's
    /// per-thread cache takes (about a kilobyte), and a larger allocation costs several times
    /// more to make and free; two cached ones cost less.
    broker: Box<Mutex<Broker>>,
    releases: Mutex<Vec<(u64, u64, u64)>>,
    /// The one handle of the peer's root while any reference holds it (the import table keeps
    /// none for the root): every `root()` and every root the peer sends is that handle, so they
    /// are one object when forwarded (one export id on another connection, as for any other
    /// import). Revoked when the connection closes, as the table's are, so that forwards of it
    /// end too.
    root: Mutex<Weak<Imported>>,
    /// Set after a release is queued: the write path takes `releases`' lock only then.
    releases_queued: AtomicBool,
    /// Bytes of cache updates buffered for replicas not decoded yet, all of this connection's:
    /// made with the first update, as most connections never have one.
    updates: OnceLock<Arc<crate::link::UpdateBudget>>,
    /// The transport's write half: `None` before the connection is established and after the
    /// writer has shut it down. Whoever holds the lock may write (see [`ConnShared::flush_now`]).
    out: Mutex<Option<Output>>,
    /// Wakes the writer task, which starts on the first wake-up.
    wake_writer: WriterWake,
    /// What the reader's close signal and timer wake (see `impl Wake for ConnShared`).
    reader_wake: crate::wake::FlagWake,
    call_done: Notify,
    max_frame_len: AtomicUsize,
    /// The features we offer (see [`Config::features`]).
    features: Features,
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
    /// What the application recorded of the peer (identities, the avatar).
    record: PeerRecord,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Bytes handed to the write path and not yet written (see [`Limits::max_unsent_bytes`]).
    unsent: AtomicUsize,
    /// `Limits::max_unsent_bytes`.
    max_unsent: usize,
    /// The most frames the reader holds back before it stops reading
    /// (`Limits::max_in_flight_calls`).
    max_held_frames: usize,
    /// `Limits::max_held_bytes`.
    max_held_bytes: usize,
    /// Set when `unsent` goes over `max_unsent`, cleared when it is back to half of it.
    congested: AtomicBool,
    /// Wakes callers waiting for the output to drain.
    space: Notify,
    /// Wakes the reader to run the frames it held back while the output was congested, or
    /// while `max_in_flight_calls` of the peer's calls were running.
    drained: Notify,
    /// Whether the reader holds frames back: a call that ends then wakes it (`drained`), as
    /// one more call may run.
    holding: AtomicBool,
    write_stall_timeout: Option<Duration>,
}

impl ConnShared {
    pub(crate) fn new(
        config: &Config,
        side: Side,
        peer_addr: Option<SocketAddr>,
        root: Option<ObjectRef>,
    ) -> Arc<ConnShared> {
        let id = crate::link::next_connection_id();
        Arc::new_cyclic(|me| ConnShared {
            id,
            me: me.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            side,
            peer_addr,
            broker: Box::new(Mutex::new(Broker::new(config.limits.clone(), id, root))),
            releases: Mutex::new(Vec::new()),
            releases_queued: AtomicBool::new(false),
            root: Mutex::new(Weak::new()),
            updates: OnceLock::new(),
            out: Mutex::new(None),
            wake_writer: WriterWake::default(),
            reader_wake: crate::wake::FlagWake::default(),
            call_done: Notify::new(),
            max_frame_len: AtomicUsize::new(config.limits.receive().max_frame_len),
            features: config.features,
            peer_known: AtomicBool::new(false),
            peer_hello: Notify::new(),
            max_depth: config.limits.max_depth,
            close_reason: OnceLock::new(),
            closed: Notify::new(),
            is_closed: AtomicBool::new(false),
            drain_timeout: config.drain_timeout,
            record: PeerRecord::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            unsent: AtomicUsize::new(0),
            max_unsent: config.limits.max_unsent_bytes.max(1),
            max_held_frames: config.limits.max_in_flight_calls.max(1),
            max_held_bytes: config.limits.max_held_bytes,
            congested: AtomicBool::new(false),
            space: Notify::new(),
            drained: Notify::new(),
            holding: AtomicBool::new(false),
            write_stall_timeout: config.write_stall_timeout,
        })
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
}
