//! pb-core: the protocol core of pb.
//!
//! The wire (framing, the handshake, messages, SCRAM) comes from `pb-proto`; this crate holds
//! the payload codec, the object model, the broker that keeps one connection's tables, and the
//! thin tokio driver that pumps it over any byte stream. Users
//! normally reach all of this through the `pb` crate.
//!
//! # Layout
//! - `frame`, `handshake`, `message`, `scram`: the wire, re-exported from `pb-proto` (no I/O);
//! - `codec`: the bincode seam for payloads, always under a byte limit, and how object
//!   references ride alongside a payload;
//! - `object`: [`ObjectRef`], [`Dispatch`], [`CallError`] and friends;
//! - `cache`: [`Cache`] and [`Replica`], objects copied to peers and kept up to date;
//! - `deadline`: deadlines for calls, carried to callees and inherited by their calls;
//! - `stream`: streams of any size with backpressure, passable like any value;
//! - `broker`: one connection's protocol state, no I/O;
//! - `connection`: the tokio driver and the [`Connection`] handle;
//! - `identity`: [`Identity`] and [`PeerCertificate`], who the peer is, as either end records it;
//! - `login`: the wire contract of the login object (interface, methods, answer types);
//! - `transport`: TCP helpers and an in-memory transport for tests;
//! - `amp`: AMP, byte-compatible with Twisted.
//!
//! # Example
//! A dynamic object served over the in-memory transport and called by name:
//! ```
//! use std::sync::Arc;
//! use pb::dispatch::{BoxFuture, Dispatch, IncomingCall, Interface, Reply};
//! use pb::{Config, Connection, ObjectRef, Side};
//!
//! struct Adder;
//! static ADDER: Interface = Interface { name: "Adder", methods: &["add"] };
//! impl Dispatch for Adder {
//!     fn interface(&self) -> &'static Interface { &ADDER }
//!     fn dispatch(self: Arc<Self>, mut call: IncomingCall) -> BoxFuture<Reply> {
//!         Box::pin(async move {
//!             match call.method() {
//!                 "add" => {
//!                     let (a, b): (i64, i64) = call.decode_args()?;
//!                     pb::dispatch::encode_result::<i64, ()>(call.caller(), Ok(a + b))
//!                 }
//!                 _ => call.no_such_method(&ADDER),
//!             }
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (a, b) = pb::transport::memory_pair();
//! let config = Config::default();
//! let server = Connection::establish(a, &config, Side::Server, Some(ObjectRef::local(Adder)), None);
//! let client = Connection::establish(b, &config, Side::Client, None, None);
//! let (_server, client) = tokio::try_join!(server, client).unwrap();
//! let sum: i64 = client.root_ref().call::<_, _, ()>("add", &(2i64, 40i64)).await.unwrap();
//! assert_eq!(sum, 42);
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod broker;
mod cache;
mod connection;
pub mod deadline;
mod identity;
pub mod login;
mod object;
pub mod pem;
pub mod stream;
pub mod trace;
pub mod transport;
pub mod twisted;
#[doc(hidden)]
pub mod wake;
pub mod zero_copy;

pub use object::codec;
use object::link;
pub use pb_proto::{frame, handshake, message, scram};

pub use broker::{Limits, ProtocolError, TableStats};
pub use cache::{
    Cache, CacheState, Replica, ReplicaChange, ReplicaError, ReplicaUpdates, Versioned,
};
pub use connection::{Config, ConnectError, ConnectionReader};
pub use identity::{Identity, PeerCertificate};
pub use link::{
    Caller, CloseReason, Connection, ConnectionStats, ExportLink, Side, UPDATE_BACKLOG,
};
pub use object::{
    BoxFuture, CallError, Copyable, Dispatch, Fault, IncomingCall, Interface, MethodSignature,
    Never, ObjectRef, Outcome, Remote, Reply, decode_outcome, encode_reply, encode_result,
};

// --- AMP section (owned by the AMP work) ---
pub mod amp;

/// Paths used by code that `#[pb::remote]` generates (`::pb::__private` re-exports this module;
/// pb's own crates use `#[pb::remote(crate = pb_core)]`). Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::current_peer;
    pub use crate::zero_copy::{
        SliceRef, TupleSeed, Wire, WireAny, WireBytes, WireField, WireFieldSerde, WirePlain,
        WireSerde,
    };
    pub use crate::{
        BoxFuture, CallError, Copyable, Dispatch, IncomingCall, Interface, MethodSignature, Never,
        ObjectRef, Remote, Reply, encode_reply, encode_result,
    };
    pub use bytes::Bytes;
    pub use serde;
    pub use std::future::ready;

    /// What a parameter that `#[pb::remote]` takes for the caller may be: `pb::Caller` alone.
    #[diagnostic::on_unimplemented(
        message = "a remote method's parameter typed `{Self}` is taken for the caller, `pb::Caller`",
        label = "a parameter whose type is named `Caller` is filled with who is calling",
        note = "to pass a type of your own named `Caller`, write its path (`self::Caller`, `crate::phone::Caller`) or import it under another name"
    )]
    pub trait CallerParam: Sized {
        /// The caller, as this parameter.
        fn from_caller(caller: &crate::Caller) -> Self;
    }

    impl CallerParam for crate::Caller {
        fn from_caller(caller: &crate::Caller) -> Self {
            caller.clone()
        }
    }
}
// --- end AMP section ---
