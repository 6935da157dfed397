//! pb-proto: pb's protocols as state machines with no I/O.
//!
//! Everything here takes plain data in and gives plain data out: bytes decoded into frames,
//! messages and boxes, values encoded into buffers, state machines driven by `handle_*` calls
//! and drained by `poll_*` calls. Nothing here reads a socket, spawns a task or reads a clock,
//! and the crate depends on no runtime and no serialization framework, so the compiler keeps
//! that promise. The tokio driver in `pb-core` pumps these machines over a transport; users
//! normally reach all of this through the `pb` crate.
//!
//! # Layout
//! - `broker`: one native connection's protocol state (tables, limits, output) as a state
//!   machine over the driver's tokens, with events out;
//! - `calls`: our calls awaiting answers and the peer's calls running here;
//! - `exports`: the objects a connection exports and their send counts;
//! - `frame`: the 4-byte length-prefixed frame codec, limits checked before allocation;
//! - `handshake`: magic, protocol version and feature flags;
//! - `message`: the native protocol's envelopes (call, answer, fault, release, cancel, update,
//!   revoked, ping, pong, goodbye);
//! - `outbox`: the bytes queued for the peer, in order, large payloads uncopied;
//! - `scram`: SCRAM-SHA-256 with `tls-exporter` channel binding (client and server);
//! - `hash`: the hashers of the id-keyed tables;
//! - `imports`: the references held to the peer's objects, by generation;
//! - `limits`: a connection's limits, protocol violations, table counts;
//! - `liveness`: keep-alive and idle timing, driven by an explicit `now`;
//! - `amp`: AMP's box codec and its request/response [`amp::Dispatcher`];
//! - `banana`: Twisted's Banana s-expression framing (the `pb` dialect and its vocabulary),
//!   an incremental decoder with Twisted's limits checked before allocation;
//! - `twisted`: Twisted's Perspective Broker (the PB dialect) as a state machine: the dialect
//!   handshake, `version`, calls and answers, luids and their reference counts, `decref`,
//!   `decache` and `uncache`;
//! - `jelly`: Twisted's Jelly, a dynamic [`jelly::Value`] and its s-expressions, shared and
//!   cyclic containers kept as a [`jelly::Graph`].
//!
//! # Example
//! A frame goes in as bytes, in any chunks, and comes out whole:
//! ```
//! # mod pb { pub use pb_proto as proto; }
//! use bytes::BytesMut;
//! use pb::proto::frame::{FrameDecoder, encode_frame};
//!
//! let mut wire = BytesMut::new();
//! encode_frame(b"hello", &mut wire);
//! let decoder = FrameDecoder::new(1024);
//! let mut input = BytesMut::new();
//! input.extend_from_slice(&wire[..3]);
//! assert!(decoder.decode(&mut input).unwrap().is_none());
//! input.extend_from_slice(&wire[3..]);
//! assert_eq!(&decoder.decode(&mut input).unwrap().unwrap()[..], b"hello");
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod amp;
pub mod banana;
pub mod broker;
pub mod calls;
pub mod exports;
pub mod frame;
pub mod handshake;
pub mod hash;
pub mod imports;
pub mod jelly;
pub mod limits;
pub mod liveness;
pub mod message;
pub mod outbox;
pub mod scram;
pub mod twisted;
