//! The object model: what can be called, how a reference to it is held, and how calls fail.
//!
//! An [`ObjectRef`] is a handle to an object that is either local (an `Arc<dyn Dispatch>`) or on
//! the other side of a connection. Both are called the same way, and both can be passed in
//! arguments and answers; see [`crate::codec`] for how they travel.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

pub(crate) mod call;
pub mod codec;
pub(crate) mod link;
pub(crate) mod signature;

use self::codec::{CodecError, Payload};
use self::link::{Caller, Connection, ExportLink, Imported};
pub use self::signature::MethodSignature;
use crate::deadline::deadline_fault;
use crate::message::FaultKind;
use pb_proto::broker::Arrived;
use pb_proto::message::{CallExtras, Signature};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The description of a remote interface: its name and its method table.
#[derive(Debug)]
pub struct Interface {
    /// The interface's name (the trait's name).
    pub name: &'static str,
    /// The names of its methods, in declaration order.
    pub methods: &'static [&'static str],
}

/// An object that can receive calls: implemented by the dispatchers that `#[pb::remote]`
/// generates, and by hand for dynamic objects.
pub trait Dispatch: Send + Sync + 'static {
    /// The interface this object implements.
    fn interface(&self) -> &'static Interface;

    /// Run one call. The future is spawned by the connection driver; dropping it cancels the call.
    fn dispatch(self: Arc<Self>, call: IncomingCall) -> BoxFuture<Reply>;

    /// Called when the object starts being exported on a connection (`link` says where),
    /// after the message that carries it was queued and that connection's lock released. Used
    /// by caches, which start observing and send what changed since the state in that message
    /// was encoded.
    #[doc(hidden)]
    fn on_export(&self, _link: &ExportLink) {}

    /// Called when the object is sent again on a connection that exports it already (`link`
    /// says where), after the message that carries it was queued and that connection's lock
    /// released. Used by caches, as `on_export`.
    #[doc(hidden)]
    fn on_resend(&self, _link: &ExportLink) {}

    /// The object as `Any`, for pb's own object types that need to recognise themselves when
    /// they come home.
    #[doc(hidden)]
    fn as_any(self: Arc<Self>) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        None
    }

    /// Called when the object stops being exported on a connection (released or disconnected),
    /// after that connection's lock is released; `object` is the id the export had there, so a
    /// hook that runs after the object was exported again (under a new id) can tell.
    #[doc(hidden)]
    fn on_unexport(&self, _connection: u64, _object: u64) {}
}

/// A call as the callee's dispatcher sees it.
pub struct IncomingCall {
    /// The buffer the arguments are a slice of: the call's frame body, or the arguments alone
    /// for a call built here.
    pub(crate) body: Bytes,
    pub(crate) method: MethodName,
    /// Where the arguments start in `body`.
    pub(crate) args_at: usize,
    /// The frame's tail, if it came split: the arguments' last byte string.
    pub(crate) tail: Option<Box<Bytes>>,
    /// The tail was handed to a decoded value (generated dispatchers decode once, taking it):
    /// the arguments cannot be decoded again.
    pub(crate) tail_taken: bool,
    pub(crate) refs: Vec<ObjectRef>,
    pub(crate) caller: Caller,
    /// What the caller sent beside the arguments: its signature of the method, its trace.
    pub(crate) extras: CallExtras,
    /// The arguments of a call that came over a Twisted PB connection (Jelly, not bincode).
    pub(crate) jelly: Option<Box<codec::twisted::JellyArgs>>,
}

/// Where a call's method name is.
pub(crate) enum MethodName {
    /// In the call's frame body, at this range (checked as UTF-8 when it was decoded).
    InBody(std::ops::Range<usize>),
    /// Given when the call was built here.
    Own(Bytes),
}

impl IncomingCall {
    /// Build a call (used for local dispatch and in tests).
    pub fn new(method: &str, args: Bytes, refs: Vec<ObjectRef>, caller: Caller) -> IncomingCall {
        IncomingCall {
            body: args,
            method: MethodName::Own(Bytes::copy_from_slice(method.as_bytes())),
            args_at: 0,
            tail: None,
            tail_taken: false,
            refs,
            caller,
            extras: CallExtras::default(),
            jelly: None,
        }
    }

    /// A call that came over a Twisted PB connection: its arguments are a Jelly tuple.
    pub(crate) fn twisted(
        method: Bytes,
        args: codec::twisted::JellyArgs,
        caller: Caller,
    ) -> IncomingCall {
        IncomingCall {
            body: Bytes::new(),
            method: MethodName::Own(method),
            args_at: 0,
            tail: None,
            tail_taken: false,
            refs: Vec::new(),
            caller,
            extras: CallExtras::default(),
            jelly: Some(Box::new(args)),
        }
    }

    /// The call, carrying the caller's signature of the method (as a dynamic call does).
    pub(crate) fn with_extras(mut self, extras: CallExtras) -> IncomingCall {
        self.extras = extras;
        self
    }

    /// Refuse the call (`BadArguments`, naming the method) if it carries a signature that is
    /// not `expected`: the caller's types are not the method's (see [`MethodSignature`]).
    /// Generated dispatchers check every call this way; a call without a signature (a raw
    /// call) passes.
    pub fn check_signature(&self, expected: &MethodSignature) -> Result<(), Fault> {
        // The method's name (checked as UTF-8 again) only for the fault of a mismatch.
        if expected.accepts(self.extras.signature) {
            return Ok(());
        }
        expected.check(self.method(), self.extras.signature)
    }

    /// The method's name.
    pub fn method(&self) -> &str {
        // Validated as UTF-8 when the message was decoded or the call was built.
        std::str::from_utf8(self.method_bytes()).unwrap_or("")
    }

    /// The method's name as bytes: what a dispatcher that only compares the name matches on,
    /// without checking it as UTF-8 again (generated dispatchers do).
    ///
    /// A hand-written dispatcher matches on it, decodes the arguments, then keeps only the
    /// caller ([`IncomingCall::into_caller`]) for encoding the result:
    ///
    /// ```
    /// use pb::dispatch::{IncomingCall, Interface, encode_result};
    /// use pb::{Caller, codec};
    ///
    /// let (args, refs) = codec::encode(&(1u32, 2u32), None).expect("encodable");
    /// let mut call = IncomingCall::new("add", args, refs, Caller::local());
    /// let reply = match call.method_bytes() {
    ///     b"add" => {
    ///         let (a, b): (u32, u32) = call.decode_args().expect("two numbers");
    ///         // The call's buffers are let go of here, before the method runs.
    ///         let caller = call.into_caller();
    ///         encode_result::<u32, ()>(&caller, Ok(a + b))
    ///     }
    ///     _ => call.no_such_method(&Interface { name: "Adder", methods: &["add"] }),
    /// };
    /// assert!(reply.expect("answered").ok);
    /// ```
    pub fn method_bytes(&self) -> &[u8] {
        match &self.method {
            MethodName::InBody(range) => self.body.get(range.clone()).unwrap_or_default(),
            MethodName::Own(name) => name,
        }
    }

    /// The encoded arguments.
    fn args(&self) -> &[u8] {
        self.body.get(self.args_at..).unwrap_or_default()
    }

    /// The encoded arguments in one buffer (put together with the frame's tail if it came
    /// split), taken out of the call: what a call forwarded as it is sends on.
    pub(crate) fn take_args(&mut self) -> Bytes {
        let args = self.body.slice(self.args_at.min(self.body.len())..);
        match self.tail.take() {
            None => args,
            Some(tail) => pb_proto::frame::join_tail(&args, &tail),
        }
    }

    /// Who is calling.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Who is calling, keeping nothing else of the call (once its arguments are decoded): the
    /// received frame the arguments came in is no longer held (see
    /// [`IncomingCall::method_bytes`] for an example).
    pub fn into_caller(self) -> Caller {
        self.caller
    }

    /// Decode the arguments as `A` (a tuple of the method's parameters). The call keeps its
    /// arguments: decoded here, it may still be passed on whole (a wrapper that reads the
    /// arguments, then dispatches the call to the object it wraps), its references and a
    /// large last argument (a split frame's tail) included.
    pub fn decode_args<A: DeserializeOwned>(&mut self) -> Result<A, Fault> {
        let (refs, tail) = (self.refs.clone(), self.tail.clone());
        self.decode_with(std::marker::PhantomData::<A>, refs, tail)
    }

    /// Decode the arguments with a seed (what generated dispatchers do, so that `Bytes`
    /// arguments are slices of the received frame), handing the references and a split
    /// frame's tail to the value: the call is not decoded again.
    #[doc(hidden)]
    pub fn decode_args_seed<S, V>(&mut self, seed: S) -> Result<V, Fault>
    where
        S: for<'de> serde::de::DeserializeSeed<'de, Value = V> + Clone,
    {
        let refs = std::mem::take(&mut self.refs);
        let tail = self.tail.take();
        self.tail_taken |= tail.is_some();
        self.decode_with(seed, refs, tail)
    }

    fn decode_with<S, V>(
        &self,
        seed: S,
        refs: Vec<ObjectRef>,
        tail: Option<Box<Bytes>>,
    ) -> Result<V, Fault>
    where
        S: for<'de> serde::de::DeserializeSeed<'de, Value = V> + Clone,
    {
        if self.tail_taken && tail.is_none() {
            return Err(Fault {
                kind: FaultKind::BadArguments,
                message: format!(
                    "the arguments of {} were taken by an earlier decode",
                    self.method()
                ),
            });
        }
        let max_depth = self
            .caller
            .connection()
            .map_or(codec::DEFAULT_MAX_DEPTH, |c| c.max_depth());
        let decoded = match &self.jelly {
            Some(args) => codec::twisted::decode_args(args, max_depth, seed),
            None => {
                codec::decode_arrived(self.args(), Some(&self.body), tail, refs, max_depth, seed)
            }
        };
        decoded.map_err(|e| Fault {
            kind: FaultKind::BadArguments,
            message: format!("cannot decode arguments of {}: {e}", self.method()),
        })
    }

    /// The answer for a method this object does not have.
    pub fn no_such_method(&self, interface: &Interface) -> Reply {
        let message = match self.jelly {
            // A Twisted PB caller gets Twisted's own text (`flavors.NoSuchMethod`'s).
            Some(_) => format!("No such method: remote_{}", self.method()),
            None => format!("{} has no method {:?}", interface.name, self.method()),
        };
        Err(Fault {
            kind: FaultKind::NoSuchMethod,
            message,
        })
    }
}

/// Turns a panic in a handler into an internal-error reply, so the caller gets an answer (the
/// same whether the object is remote or in this process) and a connection's books stay
/// balanced.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl CatchUnwind<BoxFuture<Reply>> {
    /// The handler `dispatch` makes, caught. Making it runs user code too (a generated
    /// dispatcher decodes the arguments there: a `Deserialize` impl, a `#[serde(from)]`
    /// conversion): a panic in it is the handler's failure as well, a future ready with the
    /// same `Internal` fault, not the driver's (or the local caller's) panic.
    #[inline]
    pub(crate) fn dispatch(dispatch: impl FnOnce() -> BoxFuture<Reply>) -> Self {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(dispatch)) {
            Ok(handler) => CatchUnwind(handler),
            Err(payload) => CatchUnwind(Box::pin(std::future::ready(Err(handler_panicked(
                &*payload,
            ))))),
        }
    }
}

impl<F> CatchUnwind<F> {
    /// Drop the handler, catching (and logging) a panic in its drop as one in its polls is
    /// caught: a guard of the user's that panics as a cancelled handler is dropped must not
    /// unwind the task that goes on to end the call (give back its running place and its bytes
    /// in the call window).
    pub(crate) fn drop_caught(self) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            drop(self);
        })) {
            handler_panicked(&*payload);
        }
    }
}

/// The fault that answers a call whose handler panicked (`payload`: the panic's), logged.
#[cold]
pub(crate) fn handler_panicked(payload: &(dyn std::any::Any + Send)) -> Fault {
    // The panic's message stays in this process's log (the caller learns only that the
    // handler failed); the call's span names the method.
    let why = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = why, "a call handler panicked");
    Fault {
        kind: FaultKind::Internal,
        message: "the handler failed".into(),
    }
}

impl<F: std::future::Future<Output = Reply> + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Reply;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Reply> {
        let inner = &mut self.0;
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        }));
        match polled {
            Ok(p) => p,
            Err(payload) => std::task::Poll::Ready(Err(handler_panicked(&*payload))),
        }
    }
}

/// The error of a remote method that cannot fail: one declared `-> T` (or returning nothing)
/// instead of `-> Result<T, E>`. No value of it exists, so its stub's `CallError<Never>` is
/// only ever one of the system's errors (a lost connection, a deadline, a limit), never
/// `CallError::Remote`. (The `pb` crate's docs show one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Never {}

impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for Never {}

/// An encoded outcome of a call: the callee's `Ok` or typed `Err` (`ok`), its encoded value
/// (`payload`, a [`Payload`](codec::Payload): `bytes.into()` for bytes of your own) and the
/// references the payload points into (`refs`). The protocol core's
/// [`Outcome`](pb_proto::broker::Outcome) over [`ObjectRef`]s.
pub type Outcome = pb_proto::broker::Outcome<ObjectRef, Payload>;

pub use pb_proto::broker::Fault;

/// What a dispatcher returns.
pub type Reply = Result<Outcome, Fault>;

/// The answer to a call we made, as it arrived: its payload a slice of its frame, and the
/// frame's tail if it came split.
pub(crate) type Received = pb_proto::broker::Reply<ObjectRef, Arrived>;

/// A received answer as a [`Reply`] (its payload in one buffer).
#[inline]
pub(crate) fn received(reply: Received) -> Reply {
    reply.map(|o| Outcome {
        ok: o.ok,
        payload: Payload::from(o.payload.into_bytes()),
        refs: o.refs,
    })
}

/// Encode a method's result as a [`Reply`] for `caller`.
pub fn encode_result<T: Serialize, E: Serialize>(caller: &Caller, result: Result<T, E>) -> Reply {
    encode_reply(caller, result, (false, false))
}

/// As [`encode_result`]; `plain` says whether `T` and `E` are [`codec::Plain`], whose values
/// are encoded without the encode context (what generated dispatchers do).
#[doc(hidden)]
pub fn encode_reply<T: Serialize, E: Serialize>(
    caller: &Caller,
    result: Result<T, E>,
    plain: (bool, bool),
) -> Reply {
    fn encode<V: Serialize>(
        value: &V,
        plain: bool,
        caller: &Caller,
    ) -> Result<(Payload, Vec<ObjectRef>), CodecError> {
        let Some(peer) = caller.connection() else {
            // For a local caller, which decodes it from one buffer: a slice of this thread's
            // chunk.
            return codec::encode(value, None).map(|(b, refs)| (Payload::from(b), refs));
        };
        // Plain values ask the context nothing.
        let context = (!plain).then_some(Some(peer));
        codec::encode_scratch(value, context).map(|(e, refs)| (Payload::encoded(e), refs))
    }
    // A caller over Twisted PB gets Jelly, its errors as Twisted failures.
    if let Some(link) = caller.connection().and_then(|c| c.twisted()) {
        let (ok, encoded) = match &result {
            Ok(v) => (true, codec::twisted::encode(v, link)),
            Err(e) => (false, codec::twisted::encode_failure(e, link)),
        };
        return match encoded {
            Ok(payload) => Ok(Outcome {
                ok,
                payload,
                refs: Vec::new(),
            }),
            Err(e) => Err(Fault {
                kind: FaultKind::BadAnswer,
                message: format!("callee cannot encode its answer: {e}"),
            }),
        };
    }
    let (ok, encoded) = match &result {
        Ok(v) => (true, encode(v, plain.0, caller)),
        Err(e) => (false, encode(e, plain.1, caller)),
    };
    match encoded {
        Ok((payload, refs)) => Ok(Outcome { ok, payload, refs }),
        Err(e) => Err(Fault {
            kind: FaultKind::BadAnswer,
            message: format!("callee cannot encode its answer: {e}"),
        }),
    }
}

/// A remote call failed.
///
/// `E` is the callee's own error type, which arrives typed in [`CallError::Remote`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The callee returned its own typed error.
    #[error("the callee returned an error: {0:?}")]
    Remote(E),
    /// The connection is gone (or was lost while the call was pending).
    #[error("disconnected")]
    Disconnected,
    /// The target object does not exist on the peer (or was never given to us).
    #[error("no such object: {0}")]
    NoSuchObject(String),
    /// The target has no method of that name.
    #[error("no such method: {0}")]
    NoSuchMethod(String),
    /// The callee could not decode the arguments.
    #[error("the callee could not decode the arguments: {0}")]
    BadArguments(String),
    /// The answer could not be encoded by the callee or decoded by the caller.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// The arguments could not be encoded.
    #[error("cannot encode the arguments: {0}")]
    Encode(String),
    /// A limit was exceeded, on either side; the message names the limit and its setting.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The peer is shutting down and took no new calls.
    #[error("the peer is shutting down")]
    ShuttingDown,
    /// The peer refused the call.
    #[error("refused: {0}")]
    Refused(String),
    /// The callee failed internally (for example its handler panicked).
    #[error("the callee failed: {0}")]
    Internal(String),
    /// The call's deadline passed before the answer came; the call was cancelled.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The connection ended because the peer's hello was refused: it speaks another protocol
    /// version, or not pb at all. A connection dialed with [`Connection::dial`] (as
    /// `pb::Client::connect` does) reports a bad hello this way, to the calls made before it
    /// arrived and to every call after.
    ///
    /// [`Connection::dial`]: crate::Connection::dial
    #[error("the pb handshake with the peer failed: {0}")]
    Handshake(String),
    /// A replica missed updates from its cache's owner and no longer follows it (see
    /// [`Replica::error`](crate::Replica::error), which names why).
    #[error("the replica no longer follows its cache: {0}")]
    OutOfSync(String),
}

impl<E> CallError<E> {
    /// The callee's typed error, if that is what this is.
    pub fn into_remote(self) -> Option<E> {
        match self {
            CallError::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// Convert a system fault into a call error.
    pub fn from_fault(f: Fault) -> CallError<E> {
        let Fault { kind, message } = f;
        match kind {
            FaultKind::NoSuchObject => CallError::NoSuchObject(message),
            FaultKind::NoSuchMethod => CallError::NoSuchMethod(message),
            FaultKind::BadArguments => CallError::BadArguments(message),
            FaultKind::BadAnswer => CallError::BadAnswer(message),
            FaultKind::LimitExceeded => CallError::LimitExceeded(message),
            FaultKind::ShuttingDown => CallError::ShuttingDown,
            FaultKind::Disconnected => CallError::Disconnected,
            FaultKind::DeadlineExceeded => CallError::DeadlineExceeded,
            FaultKind::Handshake => CallError::Handshake(message),
            FaultKind::Refused => CallError::Refused(message),
            // Internal, Unknown, and kinds added to the wire later.
            _ => CallError::Internal(message),
        }
    }

    /// Map the typed error.
    pub fn map_remote<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        match self {
            CallError::Remote(e) => CallError::Remote(f(e)),
            CallError::Disconnected => CallError::Disconnected,
            CallError::NoSuchObject(m) => CallError::NoSuchObject(m),
            CallError::NoSuchMethod(m) => CallError::NoSuchMethod(m),
            CallError::BadArguments(m) => CallError::BadArguments(m),
            CallError::BadAnswer(m) => CallError::BadAnswer(m),
            CallError::Encode(m) => CallError::Encode(m),
            CallError::LimitExceeded(m) => CallError::LimitExceeded(m),
            CallError::ShuttingDown => CallError::ShuttingDown,
            CallError::Refused(m) => CallError::Refused(m),
            CallError::Internal(m) => CallError::Internal(m),
            CallError::DeadlineExceeded => CallError::DeadlineExceeded,
            CallError::Handshake(m) => CallError::Handshake(m),
            CallError::OutOfSync(m) => CallError::OutOfSync(m),
        }
    }
}

#[derive(Clone)]
pub(crate) enum RefInner {
    Local(Arc<dyn Dispatch>),
    Remote(Arc<Imported>),
}

/// A reference to an object, local or remote.
///
/// Cheap to clone, `Send + Sync`. A reference received from a peer keeps the peer's object
/// alive until the last clone is dropped; then a release goes back to the owner.
///
/// # Equality
///
/// Two references are equal when they are one route to an object, which is all this process
/// can know: object ids are per connection, and nothing tells a receiver that references
/// received over two connections name one object (that would take node identity). `Hash`
/// agrees with `Eq`.
///
/// - A local object is equal by its reference's allocation: clones of a reference are equal;
///   references made separately ([`ObjectRef::local`], a typed `FooRef::new` or
///   `FooRef::from_arc`, even twice on one `Arc`) are different objects, also to peers (each is
///   exported under an id of its own). [`ObjectRef::from_arc`] twice on one `Arc<dyn Dispatch>`
///   gives equal references.
/// - A reference sent to a peer and sent back over the same connection arrives as what was
///   sent: a local object arrives as that object (equal to it, whichever connection it went
///   out and came home on), a reference received from a third peer as the handle that was
///   forwarded.
/// - A remote reference is equal by (connection, object id): the same object received any
///   number of times over one connection is one reference; received over two connections, or
///   forwarded by another peer, it gives references that are not equal, though calls on either
///   reach the one object. So an object of ours that comes back by another route (through a
///   peer that forwards it) is a remote reference, not equal to the object itself.
#[derive(Clone)]
pub struct ObjectRef(pub(crate) RefInner);

impl ObjectRef {
    /// A reference to a local object.
    pub fn local<D: Dispatch>(object: D) -> ObjectRef {
        ObjectRef(RefInner::Local(Arc::new(object)))
    }

    /// A reference to a shared local object.
    pub fn from_arc(object: Arc<dyn Dispatch>) -> ObjectRef {
        ObjectRef(RefInner::Local(object))
    }

    /// Whether the object lives in this process.
    pub fn is_local(&self) -> bool {
        matches!(self.0, RefInner::Local(_))
    }

    /// Whether calls can currently reach the object (always true for local objects).
    pub fn is_connected(&self) -> bool {
        match &self.0 {
            RefInner::Local(_) => true,
            RefInner::Remote(r) => !r.is_dead(),
        }
    }

    /// The name of the object's interface, when it is local.
    pub fn local_interface(&self) -> Option<&'static Interface> {
        match &self.0 {
            RefInner::Local(d) => Some(d.interface()),
            RefInner::Remote(_) => None,
        }
    }

    /// Completes when the connection this reference depends on is lost (never, for a local
    /// object). Completes at once if it is already lost.
    pub async fn disconnected(&self) {
        match &self.0 {
            RefInner::Local(_) => std::future::pending().await,
            RefInner::Remote(r) => r.dead().await,
        }
    }

    /// Call `method` with encoded arguments and get the encoded outcome.
    pub async fn call_raw(
        &self,
        method: &str,
        args: Bytes,
        refs: Vec<ObjectRef>,
    ) -> Result<Outcome, Fault> {
        self.call_payload(method, Payload::from(args), refs, CallExtras::default())
            .await
    }

    async fn call_payload(
        &self,
        method: &str,
        args: Payload,
        refs: Vec<ObjectRef>,
        extras: CallExtras,
    ) -> Result<Outcome, Fault> {
        match &self.0 {
            RefInner::Local(d) => {
                // The deadline binds a call to a local object as it binds a remote one (see
                // `ConnShared::call` and `spawn_call`): an expired one fails the call without
                // running the handler, and one that passes meanwhile drops the handler.
                let deadline = crate::deadline::current();
                if deadline.is_some_and(|at| at <= tokio::time::Instant::now()) {
                    return Err(deadline_fault());
                }
                let call = IncomingCall::new(method, args.into_bytes(), refs, Caller::local())
                    .with_extras(extras);
                // A handler that panics fails the call with `Internal`, as over a connection.
                let handler = CatchUnwind::dispatch(|| d.clone().dispatch(call));
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, handler)
                        .await
                        .unwrap_or_else(|_| Err(deadline_fault())),
                    None => handler.await,
                }
            }
            RefInner::Remote(r) if r.is_dead() => Err(r.dead_fault()),
            RefInner::Remote(r) => {
                received(call::call(&*r.conn, r.id, method, args, refs, extras).await)
            }
        }
    }

    /// Call `method` by name with `args` (a tuple of the method's parameters), typed by the
    /// caller: the dynamic call by name.
    ///
    /// The call carries the signature its types make (see [`MethodSignature`]): a method
    /// generated by `#[pb::remote]` that takes other types, or answers another, refuses it
    /// with [`CallError::BadArguments`] naming the method, rather than decoding its bytes by
    /// luck.
    pub async fn call<A, R, E>(&self, method: &str, args: &A) -> Result<R, CallError<E>>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
        E: DeserializeOwned,
    {
        let signature = MethodSignature::wire_of::<A, R>();
        self.call_seed(
            method,
            args,
            false,
            std::marker::PhantomData::<R>,
            signature,
        )
        .await
    }

    /// As [`ObjectRef::call`], decoding the answer with `seed` (what generated stubs do, so
    /// that a `Bytes` result is a slice of the received frame), and carrying `signature`.
    /// `plain`: the arguments are all [`codec::Plain`], encoded without the encode context.
    #[doc(hidden)]
    pub async fn call_seed<A, S, R, E>(
        &self,
        method: &str,
        args: &A,
        plain: bool,
        seed: S,
        signature: Signature,
    ) -> Result<R, CallError<E>>
    where
        A: Serialize + ?Sized,
        S: for<'de> serde::de::DeserializeSeed<'de, Value = R> + Clone,
        E: DeserializeOwned,
    {
        let remote = match &self.0 {
            RefInner::Remote(r) => Some(r),
            RefInner::Local(_) => None,
        };
        if let Some(r) = remote
            && let Some(link) = r.conn.twisted()
        {
            return call_twisted(link, r, method, args, seed, r.conn.max_depth()).await;
        }
        // Plain arguments ask the context nothing (no references, no peer): not entering it
        // spares a handle of the connection and the context's push and pop.
        let encoded = if plain {
            codec::encode_scratch(args, None)
        } else {
            codec::encode_scratch(args, Some(self.peer().as_ref()))
        };
        let (payload, refs) = encoded.map_err(|e| CallError::Encode(e.to_string()))?;
        let max_depth = remote.map_or(codec::DEFAULT_MAX_DEPTH, |r| r.conn.max_depth());
        let payload = Payload::encoded(payload);
        let extras = CallExtras {
            signature: Some(signature),
            ..CallExtras::default()
        };
        // A live remote object is called directly: one nested future less per call.
        let called = match remote {
            Some(r) if !r.is_dead() => {
                call::call(&*r.conn, r.id, method, payload, refs, extras).await
            }
            // A local object's answer is in a buffer of its own (see `encode_reply`).
            _ => self
                .call_payload(method, payload, refs, extras)
                .await
                .map(|o| pb_proto::broker::Outcome {
                    ok: o.ok,
                    payload: Arrived::from(o.payload.into_bytes()),
                    refs: o.refs,
                }),
        };
        let outcome = match called {
            Ok(o) => o,
            Err(f) => return Err(CallError::from_fault(f)),
        };
        let bad = |e: CodecError| CallError::BadAnswer(format!("cannot decode the answer: {e}"));
        let Arrived { bytes, tail } = outcome.payload;
        if outcome.ok {
            codec::decode_arrived(&bytes, Some(&bytes), tail, outcome.refs, max_depth, seed)
                .map_err(bad)
        } else {
            let e = std::marker::PhantomData::<E>;
            Err(CallError::Remote(
                codec::decode_arrived(&bytes, Some(&bytes), tail, outcome.refs, max_depth, e)
                    .map_err(bad)?,
            ))
        }
    }

    /// Send a call that wants no answer. It fails only if it cannot be sent: among other
    /// reasons, when it is over the peer's limits (`LimitExceeded`), and, on a dialed
    /// connection whose peer's hello has not arrived yet, when it is over the floor every peer
    /// accepts ([`ReceiveLimits::FLOOR`](crate::handshake::ReceiveLimits::FLOOR)): a call
    /// that wants an answer waits for the hello instead.
    pub fn send<A>(&self, method: &str, args: &A) -> Result<(), CallError<std::convert::Infallible>>
    where
        A: Serialize + ?Sized,
    {
        if let RefInner::Remote(r) = &self.0
            && let Some(link) = r.conn.twisted()
        {
            if r.is_dead() {
                return Err(CallError::from_fault(r.dead_fault()));
            }
            let payload = codec::twisted::encode_args(args, link)
                .map_err(|e| CallError::Encode(e.to_string()))?;
            return r
                .conn
                .send_oneway(r.id, method, payload, Vec::new(), CallExtras::default())
                .map_err(CallError::from_fault);
        }
        let (payload, refs) = codec::encode_scratch(args, Some(self.peer().as_ref()))
            .map_err(|e| CallError::Encode(e.to_string()))?;
        let payload = Payload::encoded(payload);
        // The parameters' signature only: a one-way call has no result to check. It carries
        // the trace context it is made in, as a call does.
        let extras = CallExtras {
            signature: Some(Signature {
                result: 0,
                ..MethodSignature::wire_of::<A, ()>()
            }),
            trace: crate::trace::outgoing(),
        };
        match &self.0 {
            RefInner::Local(d) => {
                let call = IncomingCall::new(method, payload.into_bytes(), refs, Caller::local())
                    .with_extras(extras);
                // A handler that panics (or whose arguments panic as they decode) fails
                // alone, logged, as a one-way call over a connection does.
                tokio::spawn(CatchUnwind::dispatch(|| d.clone().dispatch(call)));
                Ok(())
            }
            RefInner::Remote(r) if r.is_dead() => Err(CallError::from_fault(r.dead_fault())),
            RefInner::Remote(r) => r
                .conn
                .send_oneway(r.id, method, payload, refs, extras)
                .map_err(CallError::from_fault),
        }
    }

    /// Run an incoming call against this object: a local object dispatches it, a remote one
    /// forwards it to its owner. Useful for objects that wrap others.
    pub fn dispatch(&self, call: IncomingCall) -> BoxFuture<Reply> {
        match &self.0 {
            RefInner::Local(d) => d.clone().dispatch(call),
            RefInner::Remote(r) => {
                let r = r.clone();
                Box::pin(async move {
                    if r.is_dead() {
                        return Err(r.dead_fault());
                    }
                    let method = call.method().to_owned();
                    let mut call = call;
                    let payload = Payload::from(call.take_args());
                    received(
                        call::call(&*r.conn, r.id, &method, payload, call.refs, call.extras).await,
                    )
                })
            }
        }
    }

    /// As [`ObjectRef::dispatch`], consuming the reference (a local object's is not cloned).
    pub(crate) fn into_dispatch(self, call: IncomingCall) -> BoxFuture<Reply> {
        match self.0 {
            RefInner::Local(d) => d.dispatch(call),
            RefInner::Remote(_) => self.dispatch(call),
        }
    }

    /// The connection a remote object is reached through.
    pub fn peer(&self) -> Option<Connection> {
        match &self.0 {
            RefInner::Local(_) => None,
            RefInner::Remote(r) => Some(Connection::new(r.conn.clone())),
        }
    }
}

/// A call over a Twisted PB connection: the arguments as a Jelly tuple, the answer decoded
/// from Jelly, an `error` answer as `E` or the system error its failure names.
async fn call_twisted<A, S, R, E>(
    link: &dyn link::TwistedLink,
    r: &Imported,
    method: &str,
    args: &A,
    seed: S,
    max_depth: usize,
) -> Result<R, CallError<E>>
where
    A: Serialize + ?Sized,
    S: for<'de> serde::de::DeserializeSeed<'de, Value = R>,
    E: DeserializeOwned,
{
    if r.is_dead() {
        return Err(CallError::from_fault(r.dead_fault()));
    }
    let payload =
        codec::twisted::encode_args(args, link).map_err(|e| CallError::Encode(e.to_string()))?;
    let outcome = call::call(
        &*r.conn,
        r.id,
        method,
        payload,
        Vec::new(),
        CallExtras::default(),
    )
    .await
    .map_err(CallError::from_fault)?;
    if outcome.ok {
        codec::twisted::decode_seed(&outcome.payload.bytes, outcome.refs, link, max_depth, seed)
            .map_err(|e| CallError::BadAnswer(format!("cannot decode the answer: {e}")))
    } else {
        Err(codec::twisted::decode_error(
            &outcome.payload.bytes,
            outcome.refs,
            link,
            max_depth,
        ))
    }
}

/// Decode a typed result from an outcome, under the default depth limit
/// [`codec::DEFAULT_MAX_DEPTH`].
pub fn decode_outcome<R: DeserializeOwned, E: DeserializeOwned>(
    outcome: Outcome,
) -> Result<R, CallError<E>> {
    decode_outcome_with_depth(outcome, codec::DEFAULT_MAX_DEPTH)
}

fn decode_outcome_with_depth<R: DeserializeOwned, E: DeserializeOwned>(
    outcome: Outcome,
    max_depth: usize,
) -> Result<R, CallError<E>> {
    let bad = |e: CodecError| CallError::BadAnswer(format!("cannot decode the answer: {e}"));
    if outcome.ok {
        codec::decode_payload_seed(
            &outcome.payload,
            outcome.refs,
            max_depth,
            std::marker::PhantomData,
        )
        .map_err(bad)
    } else {
        Err(CallError::Remote(
            codec::decode_payload_seed(
                &outcome.payload,
                outcome.refs,
                max_depth,
                std::marker::PhantomData,
            )
            .map_err(bad)?,
        ))
    }
}

impl PartialEq for ObjectRef {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (RefInner::Local(a), RefInner::Local(b)) => {
                Arc::as_ptr(a) as *const () == Arc::as_ptr(b) as *const ()
            }
            (RefInner::Remote(a), RefInner::Remote(b)) => {
                a.connection == b.connection && a.id == b.id
            }
            _ => false,
        }
    }
}

impl Eq for ObjectRef {}

impl Hash for ObjectRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            RefInner::Local(a) => (0u8, Arc::as_ptr(a) as *const () as usize).hash(state),
            RefInner::Remote(r) => (1u8, r.connection, r.id).hash(state),
        }
    }
}

impl fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RefInner::Local(d) => write!(f, "ObjectRef(local {})", d.interface().name),
            RefInner::Remote(r) => {
                write!(f, "ObjectRef(connection {} object {})", r.connection, r.id)
            }
        }
    }
}

/// The serde name of the newtype an [`ObjectRef`] crosses as: its index in the payload's list of
/// references. bincode writes a newtype as its content (the native wire is the index alone);
/// the Jelly format recognises the name and writes a flavor instead.
pub(crate) const OBJECT_REF: &str = "$pb::ObjectRef";

impl Serialize for ObjectRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match codec::collect_ref(self) {
            Some(index) => s.serialize_newtype_struct(OBJECT_REF, &index),
            None => Err(serde::ser::Error::custom(
                "an object reference can only be encoded as part of a pb call",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for ObjectRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(OBJECT_REF, RefVisitor)
    }
}

/// Reads an [`ObjectRef`]'s index and resolves it in the payload's list of references.
struct RefVisitor;

impl<'de> serde::de::Visitor<'de> for RefVisitor {
    type Value = ObjectRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object reference")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<ObjectRef, D::Error> {
        let index = u32::deserialize(d)?;
        codec::resolve_ref(index).ok_or_else(|| {
            serde::de::Error::custom(format!("object reference index {index} out of range"))
        })
    }
}

/// A type passed by value: its state is copied to the peer. `#[pb::copyable]` implements it,
/// with serde's traits; any serde type can also be passed by value without it.
pub trait Copyable: Serialize + DeserializeOwned {}

/// A typed reference generated by `#[pb::remote]` (for trait `Foo`, the type `FooRef`).
pub trait Remote: Clone + Send + Sync + 'static {
    /// The interface's description.
    const INTERFACE: &'static Interface;

    /// Wrap an untyped reference. No check is made that the object implements the interface:
    /// a call to a method it lacks fails with [`CallError::NoSuchMethod`].
    fn from_object_ref(object: ObjectRef) -> Self;

    /// The untyped reference.
    fn object_ref(&self) -> &ObjectRef;
}

impl Remote for ObjectRef {
    const INTERFACE: &'static Interface = &Interface {
        name: "ObjectRef",
        methods: &[],
    };

    fn from_object_ref(object: ObjectRef) -> Self {
        object
    }

    fn object_ref(&self) -> &ObjectRef {
        self
    }
}
