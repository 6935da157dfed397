//! What `twisted_pb_server` and `twisted_pb_client` share: the root's counter and copyable,
//! the avatar of a logged-in user and the mind it calls back. The Python peers in
//! `tests/interop/` speak the same.

use pb::twisted::{Dynamic, Failure};

/// A point, copied by value; Twisted knows it by the tag `pbtest.Point`.
#[pb::copyable(twisted = "pbtest.Point")]
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: i128,
    pub y: i128,
}

/// A counter handed out by reference.
#[pb::remote]
pub trait Counter {
    async fn increment(&self) -> i64;
    async fn value(&self) -> i64;
}

/// What a logged-in user gets.
#[pb::remote]
pub trait Avatar {
    async fn whoami(&self) -> String;
    async fn call_mind(&self, x: Dynamic) -> Result<Dynamic, Failure>;
}

/// What the client hands over to be called back: `ping(x)` returns `x` (the mind given at
/// login, and the argument of the root's `call_back`).
#[pb::remote]
pub trait Pinger {
    async fn ping(&self, x: Dynamic) -> Dynamic;
}
