//! The interface `twisted_pb_server` serves and `twisted_pb_client` calls, the same on both
//! ends: the root (method names as Twisted calls them), its counter, copyable and cacheable,
//! the avatar of a logged-in user and the mind it calls back. The Python peers in
//! `tests/interop/` speak the same.

use pb::twisted::{Dynamic, Failure};
use pb::{CacheState, Caller, ObjectRef, Replica};

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

/// The state of the server's one Cacheable (`pbtest.Counter` for Twisted).
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct CounterState {
    pub count: i64,
}

/// Its one update: Twisted's copies get `observe_set(n)`.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum CounterUpdate {
    #[serde(rename = "set")]
    Set(i64),
}

impl CacheState for CounterState {
    type Update = CounterUpdate;

    fn apply(&mut self, update: &CounterUpdate) {
        let CounterUpdate::Set(n) = update;
        self.count = *n;
    }

    fn twisted_tag() -> &'static str {
        "pbtest.Counter"
    }
}

/// The root Twisted clients call.
#[pb::remote]
pub trait Root {
    async fn echo(&self, x: Dynamic) -> Dynamic;
    async fn add(&self, a: i128, b: i128) -> Result<i128, Failure>;
    async fn fail(&self, message: String) -> Result<(), Failure>;
    async fn call_back(&self, r: ObjectRef, x: Dynamic) -> Result<Dynamic, Failure>;
    async fn give_back(&self, r: ObjectRef) -> ObjectRef;
    async fn counter(&self, start: i64) -> CounterRef;
    async fn point(&self, x: i128, y: i128) -> Point;
    async fn sum_point(&self, p: Point) -> Result<i128, Failure>;
    async fn cache(&self) -> Replica<CounterState>;
    async fn bump(&self) -> Result<i64, Failure>;
    async fn exported(&self, caller: Caller) -> usize;
}
