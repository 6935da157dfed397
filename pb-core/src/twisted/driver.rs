//! The tokio driver of a Twisted PB connection: pb-proto's [`Broker`] (the PB dialect) over a
//! transport, implementing the object model's [`Link`], so that references, stubs and
//! dispatchers work over it as over pb's own protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use pb_proto::banana::BananaCodec;
use pb_proto::jelly::{self, Graph, JellyConfig, ObjectId, Value};
use pb_proto::message::{CallExtras, FaultKind};
use pb_proto::twisted::{
    Broker, Event, Incoming, Observe, PbConfig, PbError, Role, SendError, Target,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use crate::cache::CacheCopy;
use crate::codec::Payload;
use crate::codec::jelly::{CacheSend, JellyRefs, subgraph};
use crate::codec::twisted::{JellyArgs, MessageRefs, PAYLOAD_DEPTH, encode_graph_with};
use crate::link::{
    Caller, CloseReason, ConnectionStats, ExportLink, Imported, Link, LinkFuture, PeerRecord,
    ReplicaSlot, Side, TwistedLink, lock, next_connection_id,
};
use crate::object::{Fault, IncomingCall, ObjectRef, Outcome, Received, RefInner, Reply};
use pb_proto::limits::TableStats;

/// The name Twisted's clients call the root by.
pub(crate) const ROOT: &[u8] = b"root";

struct State {
    broker: Broker<ObjectRef, Waker>,
    close: Option<CloseReason>,
    bytes_in: u64,
    bytes_out: u64,
    /// The peer's objects we hold handles of, to give a flavor received again the same handle.
    imports: HashMap<i64, Weak<Imported>>,
    /// Answers to our calls, their references resolved when they arrived, until the caller
    /// takes them.
    answers: HashMap<i64, Received>,
    /// Our copies of the peer's Cacheables, until the peer confirms their end (`uncache`).
    cached: HashMap<i64, Arc<CacheCopy>>,
    /// The one handle of the peer's root while any reference holds it (see the native
    /// connection's): every `root()` is that handle, so it is one object when forwarded.
    root: Weak<Imported>,
    /// Updates of our Cacheables exported to the peer whose state no queued message has
    /// carried yet: `(version, method, args)`, each luid's in order, until one does
    /// ([`PbShared::state_queued`]).
    held_observes: HashMap<i64, Vec<(u64, String, Bytes)>>,
}

/// The most updates of one Cacheable held while no message has brought its state
/// ([`State::held_observes`]); past it the connection is cut
/// ([`CloseReason::CacheBehind`]).
const MAX_HELD_OBSERVES: usize = crate::link::MAX_BUFFERED_UPDATES;

/// One Twisted PB connection's shared state.
pub(crate) struct PbShared {
    id: u64,
    side: Side,
    peer_addr: Option<SocketAddr>,
    me: Weak<PbShared>,
    config: PbConfig,
    state: Mutex<State>,
    /// Releases of the peer's objects (luid, count, cache), queued without the state's lock
    /// (a handle may drop anywhere) and folded in by the writer.
    releases: Mutex<Vec<(i64, u64, bool)>>,
    wake_writer: Notify,
    /// One of the peer's calls ended, or one of ours started: the reader may read again.
    call_done: Notify,
    closed: watch::Sender<bool>,
    ready: watch::Sender<bool>,
    record: PeerRecord,
    /// A cut for a cache the peer cannot follow is on its way ([`PbShared::cut_behind`]).
    cutting: std::sync::atomic::AtomicBool,
}

impl PbShared {
    pub(crate) fn new(
        role: Role,
        config: PbConfig,
        peer_addr: Option<SocketAddr>,
        root: Option<ObjectRef>,
    ) -> Arc<PbShared> {
        let mut broker = Broker::new(role, config);
        if let Some(root) = root {
            broker.set_name(Bytes::from_static(ROOT), root);
        }
        Arc::new_cyclic(|me| PbShared {
            id: next_connection_id(),
            side: match role {
                Role::Server => Side::Server,
                Role::Client => Side::Client,
            },
            peer_addr,
            me: me.clone(),
            config,
            state: Mutex::new(State {
                broker,
                close: None,
                bytes_in: 0,
                bytes_out: 0,
                imports: HashMap::new(),
                answers: HashMap::new(),
                cached: HashMap::new(),
                held_observes: HashMap::new(),
                root: Weak::new(),
            }),
            releases: Mutex::new(Vec::new()),
            wake_writer: Notify::new(),
            call_done: Notify::new(),
            closed: watch::channel(false).0,
            ready: watch::channel(false).0,
            record: PeerRecord::default(),
            cutting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn arc(&self) -> Option<Arc<PbShared>> {
        self.me.upgrade()
    }

    /// Completes once the dialect handshake is done (or the connection closed).
    pub(crate) async fn wait_ready(&self) -> Result<(), CloseReason> {
        let mut rx = self.ready.subscribe();
        let mut closed = self.closed.subscribe();
        loop {
            if *rx.borrow_and_update() {
                return Ok(());
            }
            if let Some(reason) = self.close_reason() {
                return Err(reason);
            }
            tokio::select! {
                r = rx.changed() => { if r.is_err() { return Err(CloseReason::Local); } }
                _ = closed.changed() => {}
            }
        }
    }

    /// Closes the connection for `reason` (the first reason wins): callers waiting for answers
    /// are woken (their calls fail), exports are dropped, outside the lock.
    fn shut(&self, reason: CloseReason) {
        let (waiters, objects, answers) = {
            let mut st = lock(&self.state);
            if st.close.is_some() {
                return;
            }
            if let CloseReason::Protocol(why) = &reason {
                tracing::warn!(connection = self.id, reason = %why, "closing a Twisted PB connection");
            }
            st.close = Some(reason);
            let (w, o) = st.broker.close();
            // Imports die with the connection: nothing is released for them, and their
            // forwards to other peers are revoked there (below).
            let answers = std::mem::take(&mut st.answers);
            let imports: Vec<Arc<Imported>> = st
                .imports
                .values()
                .chain(std::iter::once(&st.root))
                .filter_map(Weak::upgrade)
                .collect();
            (w, o, (answers, imports))
        };
        let (answers, imports) = answers;
        drop(answers);
        for imported in imports {
            imported.revoke();
        }
        for w in waiters {
            w.wake();
        }
        for o in objects {
            unexported(&o, self.id, None);
        }
        // What the application recorded of the peer may hold this connection (a reference
        // imported here): let go of it, or neither is ever freed.
        self.record.forget();
        self.closed.send_replace(true);
        self.wake_writer.notify_one();
    }

    /// Moves the releases queued by dropped handles into the broker's output, so that a
    /// message queued after a drop leaves after its `decref`.
    fn fold_releases(&self, st: &mut State) {
        let releases = std::mem::take(&mut *lock(&self.releases));
        for (luid, count, cache) in releases {
            st.broker.release(luid, count, cache);
        }
    }

    /// Queues what the reader or a handler produced for the writer.
    fn flush(&self) {
        self.wake_writer.notify_one();
    }

    /// Resolves the flavors of a received value, in [`Graph::flavors`] order, counting imports.
    /// A flavor that does not resolve fails the whole value, but only once every other one
    /// was resolved too: the handles made are dropped then, so that the peer hears a `decref`
    /// (or `decache`) for each of its objects the value carried, as it would from Twisted.
    fn resolve(&self, graph: &Graph) -> Result<Vec<ObjectRef>, String> {
        let flavors = graph.flavors();
        if flavors.is_empty() {
            return Ok(Vec::new());
        }
        let me: Arc<dyn Link> = self.arc().ok_or("the connection is gone")?;
        let mut out = Vec::with_capacity(flavors.len());
        let mut failed = None;
        {
            let mut st = lock(&self.state);
            for f in flavors {
                match self.resolve_one(&mut st, &me, f, graph) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        match failed {
            None => Ok(out),
            Some(e) => {
                // Dropped outside the lock: each queues its release.
                drop(out);
                Err(e)
            }
        }
    }

    /// Resolves one flavor of `graph` (see [`PbShared::resolve`]).
    fn resolve_one(
        &self,
        st: &mut State,
        me: &Arc<dyn Link>,
        flavor: &Value,
        graph: &Graph,
    ) -> Result<ObjectRef, String> {
        Ok(match flavor {
            Value::Remote(ObjectId::Num(luid)) => Self::import(st, me, *luid, None)?,
            Value::Local(ObjectId::Num(luid)) => st
                .broker
                .exported(*luid)
                .cloned()
                .ok_or_else(|| format!("[\"local\", {luid}] names nothing we export"))?,
            Value::Cache { tag, luid, state } => {
                // Copies live until the owner's `uncache`, which a peer could withhold: they
                // count against the imports limit until then.
                let max = self.config.max_imports;
                if st.cached.len() >= max && !st.cached.contains_key(luid) {
                    return Err(format!("more than {max} Cacheable copies held"));
                }
                let state = subgraph(state, graph)?;
                let copy = CacheCopy::new(tag.clone(), state, self.config.jelly.max_copied_size);
                let before = st.cached.insert(*luid, copy.clone());
                match Self::import(st, me, *luid, Some(copy)) {
                    Ok(r) => r,
                    Err(e) => {
                        // Not received after all: the copy held before (if any) stays.
                        match before {
                            Some(old) => st.cached.insert(*luid, old),
                            None => st.cached.remove(luid),
                        };
                        return Err(e);
                    }
                }
            }
            Value::Cached(ObjectId::Num(luid)) => {
                let copy = st
                    .cached
                    .get(luid)
                    .cloned()
                    .ok_or_else(|| format!("[\"cached\", {luid}] names no copy we hold"))?;
                Self::import(st, me, *luid, Some(copy))?
            }
            Value::LCache(ObjectId::Num(luid)) => st
                .broker
                .exported(*luid)
                .cloned()
                .ok_or_else(|| format!("[\"lcache\", {luid}] names nothing we export"))?,
            Value::Local(ObjectId::Name(name)) if &name[..] == ROOT => {
                return Err("the root cannot be sent back".to_owned());
            }
            other => {
                return Err(format!(
                    "{} is not supported over Twisted PB yet",
                    flavor_name(other)
                ));
            }
        })
    }

    /// One more receipt of the peer's object `luid` (a Cacheable's when `copy` is given): the
    /// handle already held, or a new one.
    fn import(
        st: &mut State,
        me: &Arc<dyn Link>,
        luid: i64,
        copy: Option<Arc<CacheCopy>>,
    ) -> Result<ObjectRef, String> {
        // A receipt not kept (a negative luid, or over `max_imports`) is released at once.
        let counted = u64::try_from(luid)
            .map_err(|_| format!("luid {luid} is negative"))
            .and_then(|id| {
                st.broker
                    .note_import(luid)
                    .map(|()| id)
                    .map_err(|e| e.to_string())
            });
        let id = match counted {
            Ok(id) => id,
            Err(e) => {
                st.broker.refuse(luid, copy.is_some());
                return Err(e);
            }
        };
        if let Some(imp) = st.imports.get(&luid).and_then(Weak::upgrade) {
            imp.add_received();
            return Ok(ObjectRef(RefInner::Remote(imp)));
        }
        // Generation 1 marks a Cacheable's copy: its release is a `decache`.
        let imp = Arc::new(Imported::new(me.clone(), id, u64::from(copy.is_some())));
        if let Some(copy) = copy {
            *lock(&imp.replica) = ReplicaSlot::Attached(copy);
        }
        st.imports.insert(luid, Arc::downgrade(&imp));
        Ok(ObjectRef(RefInner::Remote(imp)))
    }

    /// Releases the peer's objects in `sexp`, an expression that did not unjelly (its
    /// Referenceables and Cacheables, [`pb_proto::twisted::sent_objects`]): one release for
    /// each receipt, so the peer stops counting them.
    fn release_sent(&self, sexp: &pb_proto::banana::Element) {
        let sent = pb_proto::twisted::sent_objects(sexp);
        if sent.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        for (luid, cache) in sent {
            st.broker.refuse(luid, cache);
        }
        drop(st);
        self.flush();
    }

    /// Runs the peer's call: resolves its references now (in the order the peer sent its
    /// messages), then dispatches it in a task and answers (or not).
    fn spawn_call(self: &Arc<Self>, call: Incoming<ObjectRef>) {
        let request = call.request;
        let answer = call.answer;
        let method = String::from_utf8_lossy(&call.method).into_owned();
        let (object, incoming, keep) = match self.incoming(call) {
            Ok(prepared) => prepared,
            Err(fault) => return self.finish(request, answer, &method, Err(fault), Vec::new()),
        };
        // Polled once here, as the message arrives: a handler that does not wait finishes
        // before the next message is read, so calls run in the order they were sent (as in
        // Twisted, where a method that returns a value has answered before the next message).
        // Only one that waits goes on in a task of its own. Making the handler runs user code
        // too (a generated dispatcher decodes the arguments then): a panic there is the
        // handler's failure, as one in its poll is, not the reader's.
        let mut cx = Context::from_waker(Waker::noop());
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut handler = object.into_dispatch(incoming);
            match handler.as_mut().poll(&mut cx) {
                Poll::Ready(reply) => Ok(reply),
                Poll::Pending => Err(handler),
            }
        }));
        match first {
            Ok(Ok(reply)) => self.finish(request, answer, &method, reply, keep),
            Err(_) => self.finish(request, answer, &method, Err(panicked()), keep),
            Ok(Err(handler)) => {
                let me = self.clone();
                tokio::spawn(async move {
                    // In a task of its own, so that a panic in it is an `Internal` failure
                    // for the caller, not a lost answer.
                    let reply = tokio::spawn(handler).await.unwrap_or_else(|e| {
                        Err(if e.is_panic() {
                            panicked()
                        } else {
                            Fault {
                                kind: FaultKind::Internal,
                                message: "the handler was cancelled".to_owned(),
                            }
                        })
                    });
                    me.finish(request, answer, &method, reply, keep);
                });
            }
        }
    }

    /// The peer's call `request` ended with `reply`: answers it (if it wants an answer), then
    /// lets go of its references.
    fn finish(&self, request: i64, answer: bool, method: &str, reply: Reply, keep: Vec<ObjectRef>) {
        if answer {
            self.answer(request, reply);
        } else {
            if let Err(f) = &reply {
                tracing::warn!(connection = self.id, method, error = %f.message, "a call without answer failed");
            }
            lock(&self.state).broker.forget_call(request);
        }
        self.call_done.notify_one();
        // The call's references are released only after its answer is queued: an answer
        // that sends one home must reach the peer before the release does.
        drop(keep);
    }

    fn incoming(
        self: &Arc<Self>,
        call: Incoming<ObjectRef>,
    ) -> Result<(ObjectRef, IncomingCall, Vec<ObjectRef>), Fault> {
        let bad = |message: String| Fault {
            kind: FaultKind::BadArguments,
            message,
        };
        // The references a refused call carries are counted and released as any other (as
        // Twisted does: its references decref when collected), or the peer would export them
        // for good: the arguments are resolved first, and the keyword arguments' references
        // too when they are refused.
        let jelly = self.config.jelly;
        let graph = match jelly::from_sexp(&call.args, &jelly) {
            Ok(graph) => graph,
            Err(e) => {
                self.release_sent(&call.args);
                return Err(bad(e.to_string()));
            }
        };
        let refs = match self.resolve(&graph) {
            Ok(refs) => refs,
            Err(e) => {
                self.release_sent(&call.kwargs);
                return Err(bad(e));
            }
        };
        let refs = MessageRefs::pair(&graph, refs);
        let kwargs = match jelly::from_sexp(&call.kwargs, &jelly) {
            Ok(kwargs) => kwargs,
            Err(e) => {
                self.release_sent(&call.kwargs);
                return Err(bad(e.to_string()));
            }
        };
        match kwargs.root() {
            Value::Dict(pairs) if pairs.is_empty() => {}
            _ => {
                // Resolved to be released as they drop.
                let _released = self.resolve(&kwargs);
                return Err(bad("keyword arguments are not supported".to_owned()));
            }
        }
        let keep = refs.refs();
        let caller = Caller::remote(self.clone(), None);
        let args = JellyArgs {
            graph,
            refs,
            max_copied: jelly.max_copied_size,
        };
        let incoming = IncomingCall::twisted(call.method, args, caller);
        Ok((call.object, incoming, keep))
    }

    /// Queues the answer to the peer's call `request`. An answer that cannot be queued is
    /// dropped once the lock is let go, which takes back the sends it counted.
    fn answer(&self, request: i64, mut reply: Reply) {
        // An update held for a Cacheable whose state this answer brings that cannot be sent.
        let mut behind = None;
        let mut st = lock(&self.state);
        let failure = |st: &State, kind: FaultKind, message: &str| {
            let (type_name, parents): (&[u8], &[&[u8]]) = match kind {
                FaultKind::NoSuchMethod => (
                    b"twisted.spread.flavors.NoSuchMethod",
                    &[
                        b"twisted.spread.flavors.NoSuchMethod",
                        b"builtins.AttributeError",
                        b"builtins.Exception",
                        b"builtins.BaseException",
                        b"builtins.object",
                    ],
                ),
                _ => (
                    b"twisted.spread.pb.Error",
                    &[
                        b"twisted.spread.pb.Error",
                        b"builtins.Exception",
                        b"builtins.BaseException",
                        b"builtins.object",
                    ],
                ),
            };
            pb_proto::twisted::error_failure(st.broker.encoder(), type_name, message, parents)
                .unwrap_or_default()
        };
        let sent = match &mut reply {
            Ok(Outcome { ok, payload, .. }) => {
                self.settle(&st, payload);
                let bytes = payload.contiguous();
                let sent = match ok {
                    true => st.broker.finish_call(request, Ok(&bytes)),
                    false => st.broker.finish_call(request, Err(&bytes)),
                };
                drop(bytes);
                if sent.is_ok() {
                    payload.sent(|luid, version| {
                        if let Err(e) = Self::state_queued(&mut st, luid, version) {
                            behind.get_or_insert(e);
                        }
                    });
                }
                sent
            }
            Err(f) => {
                let bytes = failure(&st, f.kind, &f.message);
                st.broker.finish_call(request, Err(&bytes))
            }
        };
        if let Err(SendError::Banana(e)) = sent {
            let bytes = failure(
                &st,
                FaultKind::BadAnswer,
                &format!("the answer is over a limit: {e}"),
            );
            let _ = st.broker.finish_call(request, Err(&bytes));
        }
        drop(st);
        drop(reply);
        if let Some(why) = behind {
            self.cut_behind(why);
        }
        self.flush();
    }

    /// The owner of a Cacheable we hold a copy of calls `observe_<method>` on it.
    fn observe(&self, o: Observe) {
        let copy = lock(&self.state).cached.get(&o.luid).cloned();
        // The references an update carries are counted, and let go once it is recorded: the
        // copy keeps the update's values, not live references (as a Twisted `RemoteCache`
        // lets them go once its `observe_*` returns), so the owner hears a release of each.
        let args = match jelly::from_sexp(&o.args, &self.config.jelly) {
            Ok(args) => self.resolve(&args).map(|refs| (args, refs)),
            Err(e) => {
                self.release_sent(&o.args);
                Err(e.to_string())
            }
        };
        let reply = match (copy, args) {
            (Some(copy), Ok((args, refs))) => {
                copy.observe(String::from_utf8_lossy(&o.method).into_owned(), args);
                drop(refs);
                let mut none = BytesMut::new();
                match self.encoder().encode(
                    &pb_proto::banana::Element::List(vec![pb_proto::banana::Element::from("None")]),
                    &mut none,
                ) {
                    Ok(()) => Ok(Outcome {
                        ok: true,
                        payload: none.freeze().into(),
                        refs: Vec::new(),
                    }),
                    Err(e) => Err(Fault {
                        kind: FaultKind::Internal,
                        message: e.to_string(),
                    }),
                }
            }
            (None, _) => Err(Fault {
                kind: FaultKind::NoSuchObject,
                message: format!("no cached copy of luid {}", o.luid),
            }),
            (_, Err(message)) => Err(Fault {
                kind: FaultKind::BadArguments,
                message,
            }),
        };
        if o.answer {
            self.answer(o.request, reply);
        } else if let Err(f) = reply {
            tracing::warn!(connection = self.id, error = %f.message, "a cache update failed");
        }
    }

    /// Handles one event of the broker, outside its lock.
    fn event(self: &Arc<Self>, e: Event<ObjectRef, Waker>) {
        match e {
            Event::Ready => {
                self.ready.send_replace(true);
            }
            Event::Call(call) => self.spawn_call(call),
            Event::Observe(o) => self.observe(o),
            Event::Uncached(luid) => {
                lock(&self.state).cached.remove(&luid);
            }
            Event::Answer {
                request,
                waiter,
                result,
            } => {
                let (ok, element) = match result {
                    Ok(e) => (true, e),
                    Err(e) => (false, e),
                };
                // Resolved now, before a later message (a `decref` of an object coming home
                // in this answer) changes the tables.
                let reply = self.outcome(ok, &element);
                if let Some(w) = waiter {
                    lock(&self.state).answers.insert(request, reply);
                    w.wake();
                }
            }
            Event::Unexported { object, luid, .. } => unexported(&object, self.id, Some(luid)),
            _ => {}
        }
    }
}

/// What a call whose handler panicked fails with.
fn panicked() -> Fault {
    Fault {
        kind: FaultKind::Internal,
        message: "the handler panicked".to_owned(),
    }
}

/// An exported object stopped being exported on connection `connection`.
fn unexported(object: &ObjectRef, connection: u64, luid: Option<i64>) {
    if let RefInner::Local(d) = &object.0 {
        d.on_unexport(
            connection,
            luid.and_then(|l| u64::try_from(l).ok()).unwrap_or(0),
        );
    }
}

fn flavor_name(v: &Value) -> &'static str {
    match v {
        Value::Cache { .. } | Value::Cached(_) => "a Cacheable",
        Value::LCache(_) => "a Cacheable coming home",
        _ => "this reference",
    }
}

/// Reads the transport into the broker until the connection ends.
pub(crate) async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<PbShared>, mut rd: R) {
    let _closes = CloseOnPanic(&shared);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut closed = shared.closed.subscribe();
    let handshake_by = crate::deadline::after(shared.config.handshake_timeout);
    loop {
        // What is buffered, one message at a time: each is acted on (its references
        // resolved) before the next is decoded. At the cap on the peer's calls (by count and
        // by bytes) the broker holds back all but the answers to our calls, as long as some
        // wait (a running handler may wait for one), and what it held back runs once a call
        // ends.
        loop {
            let polled = lock(&shared.state).broker.poll_input(&mut buf);
            match polled {
                Ok(Some(e)) => shared.event(e),
                Ok(None) => break,
                Err(e) => {
                    shared.flush();
                    return shared.shut(protocol(e));
                }
            }
        }
        shared.flush();
        // At the cap with nothing to read on for: read no more until a call ends (the peer's
        // output backs up, which is TCP's backpressure on it).
        if !lock(&shared.state).broker.wants_input() {
            let done = shared.call_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if lock(&shared.state).broker.wants_input() {
                continue;
            }
            tokio::select! {
                _ = done => {}
                _ = closed.wait_for(|c| *c) => return,
            }
            continue;
        }
        let (ready, held) = {
            let st = lock(&shared.state);
            (st.broker.is_ready(), st.broker.held_count() > 0)
        };
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        // Reading on at the cap with messages held back: the end of a call lets them run, with
        // no byte from the peer to wake us.
        let done = shared.call_done.notified();
        tokio::pin!(done);
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = &mut done, if held => continue,
            _ = closed.wait_for(|c| *c) => return,
            _ = tokio::time::sleep_until(handshake_by), if !ready => {
                return shared.shut(CloseReason::IdleTimeout(shared.config.handshake_timeout));
            }
        };
        match n {
            Ok(0) => return shared.shut(CloseReason::PeerClosed),
            Ok(n) => lock(&shared.state).bytes_in += n as u64,
            Err(e) => return shared.shut(CloseReason::Io(e.to_string())),
        }
    }
}

/// Closes its connection if the reader unwinds (a panic in pb's code or in user code it runs):
/// a connection nobody reads any more would otherwise never answer its calls, nor end.
struct CloseOnPanic<'a>(&'a PbShared);

impl Drop for CloseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                connection = self.0.id,
                "closing a Twisted PB connection: its reader panicked"
            );
            self.0.shut(CloseReason::Local);
        }
    }
}

fn protocol(e: PbError) -> CloseReason {
    CloseReason::Protocol(e.to_string())
}

/// Writes what the broker queues until the connection ends, then shuts the output down.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<PbShared>, mut wr: W) {
    loop {
        let notified = shared.wake_writer.notified();
        let (out, closed) = {
            let mut st = lock(&shared.state);
            shared.fold_releases(&mut st);
            st.imports.retain(|_, w| w.strong_count() > 0);
            let out = st.broker.take_output();
            st.bytes_out += out.len() as u64;
            (out, st.close.is_some())
        };
        if !out.is_empty()
            && let Err(e) = wr.write_all(&out).await
        {
            shared.shut(CloseReason::Io(e.to_string()));
            return;
        }
        if closed {
            let _ = wr.shutdown().await;
            return;
        }
        notified.await;
    }
}

/// Starts a PB connection's tasks on `io`; the returned state is its link.
pub(crate) fn start<T>(
    io: T,
    role: Role,
    config: PbConfig,
    peer_addr: Option<SocketAddr>,
    root: Option<ObjectRef>,
) -> Arc<PbShared>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let shared = PbShared::new(role, config, peer_addr, root);
    run(&shared, io);
    shared
}

/// Starts the tasks of connection `shared` on `io`: nothing is read before this.
pub(crate) fn run<T>(shared: &Arc<PbShared>, io: T)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    tokio::spawn(read_loop(shared.clone(), rd));
    tokio::spawn(write_loop(shared.clone(), wr));
}

fn target_of(id: u64) -> Target {
    if id == 0 {
        Target::Name(Bytes::from_static(ROOT))
    } else {
        Target::Luid(i64::try_from(id).unwrap_or(i64::MAX))
    }
}

fn send_fault(e: SendError) -> Fault {
    match e {
        SendError::Closed => Fault {
            kind: FaultKind::Disconnected,
            message: "the connection is closed".to_owned(),
        },
        other => Fault {
            kind: FaultKind::LimitExceeded,
            message: other.to_string(),
        },
    }
}

impl JellyRefs for PbShared {
    fn export(&self, r: &ObjectRef) -> Result<Value, String> {
        if let RefInner::Remote(imp) = &r.0
            && imp.connection == self.id
        {
            if imp.id == 0 {
                return Err("the peer's root cannot be sent back to it".to_owned());
            }
            let luid = i64::try_from(imp.id).map_err(|e| e.to_string())?;
            // Generation 1 marks a copy of the peer's Cacheable.
            return Ok(if imp.generation == 1 {
                Value::LCache(ObjectId::Num(luid))
            } else {
                Value::Local(ObjectId::Num(luid))
            });
        }
        let luid = lock(&self.state)
            .broker
            .export(r.clone())
            .map_err(|e| e.to_string())?;
        Ok(Value::Remote(ObjectId::Num(luid)))
    }

    fn import(&self, flavor: &Value) -> Result<ObjectRef, String> {
        Err(format!("{flavor:?} outside a received message"))
    }

    fn export_cache(
        &self,
        r: &ObjectRef,
        _state_from: usize,
        _version: u64,
    ) -> Result<CacheSend, String> {
        let send = lock(&self.state)
            .broker
            .export_cache(r.clone())
            .map_err(|e| e.to_string())?;
        let luid = send.luid;
        if send.new
            && let (RefInner::Local(d), Some(me)) = (&r.0, self.arc())
        {
            // The peer observes the cache from now on (Twisted's
            // `getStateToCacheAndObserveFor`); it stops when the peer decaches it.
            let me: Arc<dyn Link> = me;
            d.on_export(&ExportLink {
                conn: Arc::downgrade(&me),
                connection: self.id,
                object: luid as u64,
            });
        }
        Ok(send)
    }
}

impl TwistedLink for PbShared {
    fn refs(&self) -> &dyn JellyRefs {
        self
    }

    fn encoder(&self) -> BananaCodec {
        lock(&self.state).broker.encoder().clone()
    }

    fn jelly_config(&self) -> JellyConfig {
        self.config.jelly
    }

    fn send_observe(&self, object: u64, method: &str, args: &Graph, version: u64) {
        let Ok(luid) = i64::try_from(object) else {
            return;
        };
        {
            let mut st = lock(&self.state);
            let bytes = jelly::to_sexp(args, &self.config.jelly)
                .map_err(|e| e.to_string())
                .and_then(|sexp| {
                    let mut out = BytesMut::new();
                    st.broker
                        .encoder()
                        .encode_nested(&sexp, &mut out, PAYLOAD_DEPTH)
                        .map(|()| out.freeze())
                        .map_err(|e| e.to_string())
                });
            let sent = bytes.and_then(|b| {
                if st.broker.exported(luid).is_some() && !st.broker.state_queued(luid) {
                    // The peer has no copy yet: the update waits for the message that brings
                    // the state, and goes after it if that state is older.
                    let held = st.held_observes.entry(luid).or_default();
                    if held.len() >= MAX_HELD_OBSERVES {
                        return Err(format!(
                            "more than {MAX_HELD_OBSERVES} updates made before the state left"
                        ));
                    }
                    held.push((version, method.to_owned(), b));
                    return Ok(());
                }
                st.broker
                    .start_call(&Target::Luid(luid), method.as_bytes(), &b, None, true)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = sent {
                drop(st);
                // The copy would stay behind for good: the peer cannot follow the cache.
                return self.cut_behind(format!("cannot send a cache update ({method}): {e}"));
            }
        }
        self.flush();
    }

    fn owned(&self) -> Option<Arc<dyn TwistedLink>> {
        self.arc().map(|me| me as Arc<dyn TwistedLink>)
    }

    fn take_back(&self, sends: &[(i64, bool)]) {
        let ended: Vec<(ObjectRef, i64)> = {
            let mut st = lock(&self.state);
            sends
                .iter()
                .filter_map(|&(luid, cache)| match st.broker.unsend(luid, cache) {
                    Some((object, true)) => {
                        st.held_observes.remove(&luid);
                        Some((object, luid))
                    }
                    _ => None,
                })
                .collect()
        };
        // Outside the lock: an unexport hook may use this connection.
        for (object, luid) in ended {
            unexported(&object, self.id, Some(luid));
        }
    }
}

impl Link for PbShared {
    fn id(&self) -> u64 {
        self.id
    }

    fn peer_limits(&self) -> Option<crate::handshake::ReceiveLimits> {
        // Banana's limits are on each string and list, and were checked as each was encoded.
        None
    }

    fn own_limits(&self) -> Option<crate::handshake::ReceiveLimits> {
        None
    }

    fn side(&self) -> Side {
        self.side
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    fn max_depth(&self) -> usize {
        self.config.jelly.max_depth
    }

    fn record(&self) -> &PeerRecord {
        &self.record
    }

    fn wait_to_call(&self, _: usize, _: usize, _: usize) -> Option<LinkFuture<'_, ()>> {
        None
    }

    fn start_call(
        &self,
        target: u64,
        method: &str,
        mut payload: Payload,
        _refs: Vec<ObjectRef>,
        how: (Waker, Option<tokio::time::Instant>, CallExtras),
    ) -> Result<u64, Fault> {
        let id = self.send_call(target, method, &mut payload, Some(how.0))?;
        // A reader stopped at the cap on the peer's calls reads on while ours wait for answers.
        self.call_done.notify_one();
        Ok(id as u64)
    }

    fn poll_answer(&self, id: u64, cx: &mut Context<'_>) -> Poll<Received> {
        let id = id as i64;
        let mut st = lock(&self.state);
        if let Some(reply) = st.answers.remove(&id) {
            return Poll::Ready(reply);
        }
        if st.broker.set_waiter(id, cx.waker().clone()) {
            return Poll::Pending;
        }
        drop(st);
        Poll::Ready(Err(self.close_fault()))
    }

    fn cancel_call(&self, id: u64) {
        let id = id as i64;
        let gone = {
            let mut st = lock(&self.state);
            st.broker.abandon(id);
            st.answers.remove(&id)
        };
        // An answer not taken releases its references here, outside the lock.
        drop(gone);
    }

    fn send_oneway(
        &self,
        target: u64,
        method: &str,
        mut payload: Payload,
        _refs: Vec<ObjectRef>,
        _extras: CallExtras,
    ) -> Result<(), Fault> {
        self.send_call(target, method, &mut payload, None)
            .map(|_| ())
    }

    fn send_update(&self, _object: u64, _payload: Bytes, _state: &dyn Fn() -> Option<Bytes>) {}

    fn is_exported(&self, object: u64) -> bool {
        i64::try_from(object).is_ok_and(|l| lock(&self.state).broker.exported(l).is_some())
    }

    fn queue_release(&self, id: u64, generation: u64, count: u64) {
        if count == 0 {
            return;
        }
        let Ok(luid) = i64::try_from(id) else { return };
        lock(&self.releases).push((luid, count, generation == 1));
        self.wake_writer.notify_one();
    }

    fn revoke_export(&self, _object: u64) {}

    fn peer_root(self: Arc<Self>) -> ObjectRef {
        let mut st = lock(&self.state);
        if let Some(root) = st.root.upgrade() {
            return ObjectRef(RefInner::Remote(root));
        }
        let me: Arc<dyn Link> = self.clone();
        let root = Arc::new(Imported::new(me, 0, 0));
        st.root = Arc::downgrade(&root);
        ObjectRef(RefInner::Remote(root))
    }

    fn set_root(&self, root: Option<ObjectRef>) -> Option<ObjectRef> {
        let mut st = lock(&self.state);
        let old = st.broker.remove_name(ROOT);
        if let Some(root) = root {
            st.broker.set_name(Bytes::from_static(ROOT), root);
        }
        old
    }

    fn stats(&self) -> ConnectionStats {
        let st = lock(&self.state);
        ConnectionStats {
            tables: TableStats {
                exported: st.broker.export_count(),
                imported: st.broker.import_count(),
                pending_calls: st.broker.pending_count(),
                in_flight_calls: st.broker.running_count(),
                ..TableStats::default()
            },
            bytes_in: st.bytes_in,
            bytes_out: st.bytes_out,
            unsent_bytes: 0,
        }
    }

    fn set_max_frame_len(&self, _len: usize) {}

    fn set_max_call_bytes(&self, _bytes: usize) {}

    fn is_closed(&self) -> bool {
        lock(&self.state).close.is_some()
    }

    fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.state).close.clone()
    }

    fn close_fault(&self) -> Fault {
        Fault {
            kind: FaultKind::Disconnected,
            message: match self.close_reason() {
                Some(r) => format!("the connection is closed: {r:?}"),
                None => "the connection is closed".to_owned(),
            },
        }
    }

    fn closed(&self) -> LinkFuture<'_, ()> {
        let mut rx = self.closed.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|c| *c).await;
        })
    }

    fn close(&self) -> Option<LinkFuture<'_, ()>> {
        self.shut(CloseReason::Local);
        None
    }

    fn abort(&self) {
        self.shut(CloseReason::Local);
    }

    fn twisted(&self) -> Option<&dyn TwistedLink> {
        Some(self)
    }
}

impl PbShared {
    /// A message carrying the state of our Cacheable `luid` at `version` was queued: the
    /// updates held for it that the state does not include follow it. Fails if one of them
    /// cannot be sent (the copy would stay behind: the caller cuts the connection once the
    /// lock is let go).
    fn state_queued(st: &mut State, luid: i64, version: u64) -> Result<(), String> {
        st.broker.note_state_queued(luid);
        for (v, method, args) in st.held_observes.remove(&luid).unwrap_or_default() {
            if v > version {
                st.broker
                    .start_call(&Target::Luid(luid), method.as_bytes(), &args, None, true)
                    .map_err(|e| format!("cannot send a cache update ({method}): {e}"))?;
            }
        }
        Ok(())
    }

    /// Cut the connection, which cannot follow a cache ([`CloseReason::CacheBehind`]), from a
    /// task of its own when a runtime is at hand: the caller may hold the cache's lock, and
    /// closing runs user code (export hooks, drops) that may update that very cache.
    fn cut_behind(&self, why: String) {
        if self.cutting.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        tracing::warn!(connection = self.id, %why, "closing connection");
        match (tokio::runtime::Handle::try_current(), self.arc()) {
            (Ok(runtime), Some(me)) => {
                runtime.spawn(async move { me.shut(CloseReason::CacheBehind(why)) });
            }
            _ => self.shut(CloseReason::CacheBehind(why)),
        }
    }

    /// A payload about to be queued: the Cacheables whose state a message already queued
    /// carried go as `["cached", luid]` instead (see [`Payload::settle`]).
    fn settle(&self, st: &State, payload: &mut Payload) {
        payload.settle(
            |luid| st.broker.state_queued(luid),
            |graph| encode_graph_with(graph, &self.config.jelly, st.broker.encoder()),
        );
    }

    /// Queues our call (after the releases dropped handles queued, so that they leave
    /// first); `waiter` is woken by its answer, and without one none is asked for.
    /// Queues our call (a payload that is not sent, dropped by the caller once the lock is let
    /// go, takes back the sends it counted).
    fn send_call(
        &self,
        target: u64,
        method: &str,
        payload: &mut Payload,
        waiter: Option<Waker>,
    ) -> Result<i64, Fault> {
        let (id, behind) = {
            let mut st = lock(&self.state);
            if st.close.is_some() {
                return Err(self.close_fault());
            }
            self.fold_releases(&mut st);
            self.settle(&st, payload);
            let id = st
                .broker
                .start_call(
                    &target_of(target),
                    method.as_bytes(),
                    &payload.contiguous(),
                    waiter,
                    false,
                )
                .map_err(send_fault)?;
            let mut behind = None;
            payload.sent(|luid, version| {
                if let Err(e) = Self::state_queued(&mut st, luid, version) {
                    behind.get_or_insert(e);
                }
            });
            (id, behind)
        };
        if let Some(why) = behind {
            self.cut_behind(why);
        }
        self.flush();
        Ok(id)
    }

    /// An answer's value as an outcome: its flavors resolved (imports counted) now that it is
    /// matched to our call, its bytes re-encoded for the caller to decode.
    fn outcome(&self, ok: bool, element: &pb_proto::banana::Element) -> Received {
        let bad = |message: String| Fault {
            kind: FaultKind::BadAnswer,
            message,
        };
        let graph = match jelly::from_sexp(element, &self.config.jelly) {
            Ok(graph) => graph,
            Err(e) => {
                self.release_sent(element);
                return Err(bad(e.to_string()));
            }
        };
        let refs = self.resolve(&graph).map_err(bad)?;
        let mut payload = BytesMut::new();
        self.encoder()
            .encode(element, &mut payload)
            .map_err(|e| bad(e.to_string()))?;
        Ok(pb_proto::broker::Outcome {
            ok,
            payload: payload.freeze().into(),
            refs,
        })
    }
}
