//! pb: remote objects for tokio, after Twisted's Perspective Broker and AMP.
//!
//! Declare an interface as a trait of async methods, implement it, serve it, and call it from
//! the other side through a typed stub. Either side may pass references to its own objects and
//! be called back on them.
//!
//! **The guide** is `docs/guide/` in pb's repository (start at `docs/guide/README.md`; it is
//! an mdBook, and each page reads as plain markdown): coming from Twisted, with Twisted's PB and
//! AMP howtos ported as `examples/howto_*.rs`, then references and lifetimes, errors, login and
//! TLS, streaming, peer-to-peer, AMP and limits.
//!
//! ```
//! #[pb::remote]
//! pub trait Greeter {
//!     async fn greet(&self, name: String) -> Result<String, GreetError>;
//! }
//!
//! #[pb::copyable]
//! #[derive(Debug, PartialEq)]
//! pub enum GreetError { Empty }
//!
//! struct Polite;
//! impl Greeter for Polite {
//!     async fn greet(&self, name: String) -> Result<String, GreetError> {
//!         if name.is_empty() { return Err(GreetError::Empty) }
//!         Ok(format!("hello, {name}"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = pb::Server::bind("127.0.0.1:0").await?.serve(GreeterRef::new(Polite));
//! let conn = pb::Client::connect(server.local_addr()).await?;
//! let greeter: GreeterRef = conn.root();
//! assert_eq!(greeter.greet("ada".into()).await?, "hello, ada");
//! assert_eq!(greeter.greet("".into()).await, Err(pb::CallError::Remote(GreetError::Empty)));
//! conn.close().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Serving until stopped
//! [`Server::serve`] returns a [`ServerHandle`]: keep it, because dropping it stops the server
//! accepting connections (the compiler warns about a handle left unused). A program serves until
//! the server is shut down with [`ServerHandle::wait`]; anything that should be able to shut it
//! down, a call handler included, holds a [`ShutdownHandle`]. Taken from the bound [`Server`]
//! before serving, it can be part of the root object:
//!
//! ```
//! #[pb::remote]
//! pub trait Admin {
//!     async fn stop(&self) -> Result<(), ()>;
//! }
//!
//! struct Control { stop: pb::ShutdownHandle }
//! impl Admin for Control {
//!     async fn stop(&self) -> Result<(), ()> {
//!         // Only asks: the shutdown lets this call finish and answers it first.
//!         self.stop.shutdown();
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = pb::Server::from_listener(listener);
//! let stop = server.shutdown_handle();
//! let server = server.serve(AdminRef::new(Control { stop }));
//!
//! let conn = pb::Client::connect(server.local_addr()).await?;
//! let admin: AdminRef = conn.root();
//! tokio::spawn(async move { admin.stop().await });
//! // Returns once the shutdown has closed every connection.
//! server.wait().await;
//! # Ok(()) }
//! ```
//!
//! # Logging in
//! A server that serves a [`Portal`] makes each connection log in before it reaches anything:
//! the portal checks the credentials (SCRAM-SHA-256 passwords from [`Verifiers`], anonymous, or
//! a TLS client certificate) and its realm hands out the avatar, the object the user acts
//! through. [`Client::login`] dials, logs in with a password and returns the typed avatar; for
//! TLS, a mind (an object of the client's that the realm may call back, typed on the server's
//! side with [`LoginRequest::mind_as`]) or other ways to log in, open a [`Session`] with
//! [`Client::builder`]. **One login per connection:** once a connection has logged in, it stays
//! that user's, and the server refuses another login on it ([`Refusal::AlreadyLoggedIn`]); to
//! act as another user, open another connection.
//!
//! ```
//! #[pb::remote]
//! pub trait Account {
//!     async fn whoami(&self, caller: pb::Caller) -> Result<String, ()>;
//! }
//!
//! struct Me;
//! impl Account for Me {
//!     async fn whoami(&self, caller: pb::Caller) -> Result<String, ()> {
//!         let identity = caller.identity::<pb::Identity>().ok_or(())?;
//!         Ok(identity.name().unwrap_or("nobody").to_owned())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut users = pb::Verifiers::new();
//! users.add_user("ada", "correct horse")?;
//! let portal = pb::Portal::new(|login: pb::LoginRequest| async move {
//!     // A client that sent a mind (`Session::with_mind`) could be called back through
//!     // `login.mind_as::<SomeRef>()`.
//!     Ok(pb::Avatar::new(AccountRef::new(Me)))
//! })
//! .verifiers(users);
//! let server = pb::Server::bind("127.0.0.1:0").await?.serve_portal(portal);
//!
//! let me: AccountRef = pb::Client::login(server.local_addr(), "ada", "correct horse").await?;
//! assert_eq!(me.whoami().await?, "ada");
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # What `#[pb::remote]` generates
//! (The macros' own pages, [`remote`](macro@remote), [`copyable`](macro@copyable) and
//! [`Copyable`](derive@Copyable), document each in full, with examples.)
//!
//! For a trait `Foo`:
//! - the trait itself, `Send + Sync + 'static`, whose `async fn`s implementations may write as
//!   `async fn` (their futures must be `Send`);
//! - `FooRef`, the typed stub: a reference to a `Foo` object, local or remote, with one async
//!   method per trait method returning `Result<T, pb::CallError<E>>`; `FooRef::new(obj)` wraps a
//!   local object so that it can be passed to a peer;
//! - `ServeFoo<T>`, the dispatcher serving any `T: Foo`.
//!
//! A parameter of type [`Caller`] is filled on the callee's side with who is calling, and is
//! not part of the stub's signature (Twisted's `Viewable`). The macro knows it by its name:
//! `Caller` written alone, or a path from `pb` (`pb::Caller`); a type of your own named
//! `Caller` is passed as any other when written with its path (`self::Caller`,
//! `crate::phone::Caller`), and written alone it is a compile error that says so. A dynamic call by name is
//! [`ObjectRef::call`].
//!
//! A method that cannot fail returns its value itself (`-> T`, or nothing): its stub's error
//! is [`CallError<Never>`](Never), which only the system's failures (a lost connection, a
//! deadline, a limit) can be.
//!
//! ```
//! #[pb::remote]
//! trait Clock {
//!     async fn now(&self) -> u64;
//!     async fn tick(&self);
//! }
//!
//! struct Wall;
//! impl Clock for Wall {
//!     async fn now(&self) -> u64 {
//!         42
//!     }
//!     async fn tick(&self) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let clock = ClockRef::new(Wall);
//! let now: Result<u64, pb::CallError<pb::Never>> = clock.now().await;
//! assert_eq!(now, Ok(42));
//! assert_eq!(clock.tick().await, Ok(()));
//! # }
//! ```
//!
//! # What `#[pb::copyable]` generates
//! serde's `Serialize` and `Deserialize` (through pb's own serde, so users need no serde
//! dependency) and the [`Copyable`] marker. `#[pb::copyable(state_for = path)]` adds Twisted's
//! `getStateToCopyFor`: `path` is a `fn(&Self, Option<&Connection>) -> Self` that picks the state
//! each peer receives (the connection is `None` for in-process calls). Serde attributes on the
//! type and its fields (`#[serde(rename = ...)]`, `#[serde(skip)]`, `#[serde(with = ...)]`)
//! pass through. [`copyable`](macro@copyable) has an example of each.
//!
//! A type that derives serde's traits itself takes the marker alone with
//! `#[derive(pb::Copyable)]` (a per-peer state needs the attribute form):
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize, pb::Copyable)]
//! struct Point {
//!     x: i32,
//!     y: i32,
//! }
//! fn passed_by_value<T: pb::Copyable>() {}
//! passed_by_value::<Point>();
//! ```
//!
//! # Layout
//! Everything is re-exported here at one path each; the crates behind it are:
//! - `pb-proto`, the protocols with no I/O (frames, handshake, messages, SCRAM, keep-alive
//!   timing, AMP boxes), reachable as [`proto`] for tools that speak the wire;
//! - `pb-core`, the object model, the payload codec, the broker, the connection driver,
//!   caches, streams, deadlines, AMP commands and driver;
//! - `pb-server`, listening (TCP, TLS), login (portal, realm, avatar), connection limits,
//!   graceful shutdown;
//! - `pb-client`, connecting (TCP, TLS), login, reconnecting;
//! - [`Node`] (here), a peer that both listens and dials;
//! - `pb-derive`, the macros.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub use pb_client::{
    Backoff, Client, ClientBuilder, ClientError, ClientState, ClientTls, LoginError, Reconnecting,
    Session,
};
pub use pb_core::login::Refusal;
pub use pb_core::zero_copy;
pub use pb_core::{
    Cache, CacheState, CallError, Caller, CloseReason, Config, ConnectError, Connection,
    ConnectionStats, Copyable, Limits, Never, ObjectRef, Remote, Replica, ReplicaChange,
    ReplicaError, ReplicaUpdates, Side, TableStats, UPDATE_BACKLOG, Versioned, codec, deadline,
    scram, stream, trace, transport,
};
pub use pb_derive::{Copyable, copyable, remote};

/// Lets a trait's `async fn`s be called through `dyn` (the [`async-trait`] crate, re-exported
/// so that programs need no dependency of their own): put `#[pb::async_trait]` on an impl of
/// [`Realm`] or [`VerifierStore`] and write its methods as `async fn`.
///
/// ```
/// #[pb::async_trait]
/// impl pb::VerifierStore for NoUsers {
///     async fn verifier(&self, _username: &str) -> Option<pb::scram::ScramVerifier> {
///         None
///     }
/// }
/// struct NoUsers;
/// ```
///
/// [`async-trait`]: https://docs.rs/async-trait
pub use async_trait::async_trait;
pub use pb_server::{
    Avatar, ClientAuth, Identity, LoginConfig, LoginRequest, PeerCertificate, Portal, Realm,
    Server, ServerBuilder, ServerHandle, ServerTls, ShutdownHandle, VerifierStore, Verifiers,
};

pub use pb_core::pem::TlsError;
pub use pb_server::dev;
/// The rustls crate pb's TLS is built on, for its configuration types.
pub use pb_server::rustls;

/// The protocols as state machines with no I/O (the `pb-proto` crate): frames, the handshake,
/// message envelopes, SCRAM, keep-alive timing and AMP's boxes. The one escape hatch of this
/// facade, for tools and tests that speak the wire themselves; programs need none of it.
pub use pb_proto as proto;

mod node;
pub use node::{Node, NodeBuilder};

/// The low-level dispatch API, for objects written by hand instead of with `#[pb::remote]`
/// (dynamic interfaces, proxies, forwarders): the [`Dispatch`](dispatch::Dispatch) trait, the
/// [`IncomingCall`](dispatch::IncomingCall) it is given, and the
/// [`Reply`](dispatch::Reply) it returns (an [`Outcome`](dispatch::Outcome), whose encoded
/// value is a [`Payload`](dispatch::Payload), or a [`Fault`](dispatch::Fault)).
pub mod dispatch {
    pub use pb_core::codec::Payload;
    pub use pb_core::{
        BoxFuture, Dispatch, Fault, IncomingCall, Interface, MethodSignature, Outcome, Reply,
        decode_outcome, encode_reply, encode_result,
    };
}

/// The names most programs need: `use pb::prelude::*;`.
pub mod prelude {
    pub use crate::{CallError, Caller, Client, Connection, ObjectRef, Remote, Server};
}

/// Paths used by generated code. Not public API.
#[doc(hidden)]
pub use pb_core::__private;

// --- AMP section (owned by the AMP work) ---
pub use pb_core::amp;

/// Twisted's Perspective Broker: pb objects served to Twisted PB clients, Twisted PB servers
/// called from pb (see `pb_core::twisted`).
pub use pb_core::twisted;
pub use pb_derive::{AmpCommand, AmpError, AmpFields};
// --- end AMP section ---
