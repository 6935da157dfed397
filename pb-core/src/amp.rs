//! AMP, byte-compatible with Twisted's `twisted.protocols.amp`, with typed commands.
//!
//! A Rust program and a Twisted program can call each other: pb writes and reads the same
//! key/value boxes, special keys, argument encodings and error codes as Twisted 26.10.
//!
//! # Layout
//! - `codec`: [`AmpBox`] and the incremental [`BoxCodec`], no I/O, limits checked before
//!   allocating;
//! - `value`, `bigint`, `decimal`, `datetime`: the argument types and their exact encodings
//!   ([`AmpValue`]);
//! - `argument`: named and optional arguments, [`AmpFields`] structs, [`AmpList`];
//! - `command`: the [`AmpCommand`] and [`AmpError`] traits and the errors of a call;
//! - `dispatch`: the [`Dispatcher`], the request/response state of a connection, no I/O;
//! - `locator`: responders by command name ([`Locator`]);
//! - `handle`: the [`AmpConnection`] handle and [`serve`];
//! - `calls`: the requests of the handles to the driver, and the slots our calls wait in;
//! - `driver`: the tokio driver and StartTLS.
//!
//! # Example
//! ```
//! use pb::amp::{AmpConfig, AmpConnection, Locator};
//!
//! /// Twisted: `class Sum(amp.Command): arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]`.
//! #[derive(pb::AmpCommand)]
//! #[amp(response = Total)]
//! struct Sum {
//!     a: i64,
//!     b: i64,
//! }
//!
//! #[derive(pb::AmpFields)]
//! struct Total {
//!     total: i64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (a, b) = tokio::io::duplex(4096);
//! let _server = AmpConnection::spawn(
//!     a,
//!     AmpConfig::default(),
//!     Locator::new().respond(|Sum { a, b }| async move { Ok(Total { total: a + b }) }),
//! );
//! let client = AmpConnection::spawn(b, AmpConfig::default(), Locator::new());
//! let Total { total } = client.call(&Sum { a: 13, b: 81 }).await.unwrap();
//! assert_eq!(total, 94);
//! # }
//! ```

mod argument;
mod bigint;
mod calls;
mod command;
mod datetime;
mod decimal;
mod driver;
mod handle;
mod locator;
mod value;

use pb_proto::amp::{codec, dispatch};

pub use argument::{AmpArgument, AmpFields, AmpList, ArgumentError};
pub use bigint::BigInt;
pub use bytes::{Bytes, BytesMut};
pub use codec::{
    AmpBox, AmpBoxIter, BoxCodec, BoxCodecConfig, BoxCodecError, MAX_KEY_LENGTH, MAX_VALUE_LENGTH,
    SmallBytes,
};
pub use command::{
    AmpCallError, AmpCommand, AmpError, NoErrors, RemoteError, UNHANDLED_ERROR_CODE,
    UNKNOWN_ERROR_CODE,
};
pub use datetime::DateTime;
pub use decimal::Decimal;
pub use dispatch::{AmpProtocolError, DisconnectReason, Event, START_TLS, SendError};

/// Limits and policies of one AMP connection, with rustls's server configuration for the
/// server side of StartTLS (see [`AmpConfig`](pb_proto::amp::dispatch::AmpConfig)).
pub type AmpConfig = dispatch::AmpConfig<std::sync::Arc<rustls::ServerConfig>>;

/// The request/response state of one AMP connection, with no I/O (see
/// [`Dispatcher`](pb_proto::amp::Dispatcher)).
pub type Dispatcher = dispatch::Dispatcher<std::sync::Arc<rustls::ServerConfig>>;
pub use handle::{AmpConnection, serve};
pub use locator::{AmpReply, Locator};
/// The rustls crate used for StartTLS, so callers need no direct dependency.
pub use tokio_rustls::rustls;
pub use value::AmpValue;

/// Items used by `#[derive(AmpCommand)]` and friends; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use super::argument::AmpArgument;
    pub use super::{AmpBox, AmpCommand, AmpError, AmpFields, ArgumentError, NoErrors};
    pub use ::core::option::Option;
    pub use ::core::result::Result;
    pub use ::std::string::String;
}
