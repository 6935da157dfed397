//! AMP's wire, with no I/O: the key/value box codec and the request/response state of one
//! connection. pb-core's `amp` module adds the typed arguments, commands and the tokio driver.
//!
//! # Layout
//! - `codec`: [`AmpBox`](codec::AmpBox) and the incremental [`BoxCodec`](codec::BoxCodec),
//!   limits checked before allocating;
//! - `dispatch`: the [`Dispatcher`], tags, special keys, the outstanding-ask cap, fatal errors
//!   and the StartTLS hold-and-switch, driven by `handle_input` / `poll_event` / `poll_transmit`.

pub mod codec;
pub mod dispatch;

pub use dispatch::Dispatcher;
