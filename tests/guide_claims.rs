//! What the user guide says, checked: each test quotes the sentence it checks.
#![allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pb::{Cache, CacheState, CallError, Replica};

// ---------------------------------------------------------------------------------------------
// Caches

#[pb::copyable]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counter {
    pub n: u64,
}

impl CacheState for Counter {
    type Update = u64;
    fn apply(&mut self, by: &u64) {
        self.n += by;
    }
}

#[pb::remote]
pub trait Feed {
    async fn counter(&self) -> Result<Replica<Counter>, ()>;
    async fn bump(&self) -> Result<u64, ()>;
}

struct FeedImpl(Cache<Counter>);

impl Feed for FeedImpl {
    async fn counter(&self) -> Result<Replica<Counter>, ()> {
        Ok(self.0.replica())
    }
    async fn bump(&self) -> Result<u64, ()> {
        self.0.update(1).map_err(|_| ())
    }
}

/// docs/guide/references.md: "A replica that misses an update (...) never goes silently
/// stale: `Replica::error()` says why, and `wait_for` fails with `CallError::OutOfSync` until
/// the owner sends a full state."
#[tokio::test(start_paused = true)]
async fn wait_for_on_a_replica_out_of_sync_fails_with_out_of_sync() {
    let cache = Cache::new(Counter::default());
    let (_server, client) = memory_pair(FeedRef::new(FeedImpl(cache.clone()))).await;
    let feed: FeedRef = client.root();
    // As tests/refs_cache.rs does: more than 4 096 updates arrive before the replica is
    // decoded, so it misses some.
    let outcome = client
        .root_ref()
        .call_raw("counter", bytes::Bytes::new(), Vec::new())
        .await
        .unwrap();
    for _ in 0..5000 {
        cache.update(1).unwrap();
    }
    let _ = feed.bump().await.unwrap();
    let replica: Replica<Counter> = pb::dispatch::decode_outcome::<_, ()>(outcome).unwrap();
    assert!(replica.error().is_some(), "the replica is out of sync");
    // Its (stale) state satisfies the test; the owner sent no full state since.
    let waited = tokio::time::timeout(Duration::from_secs(5), replica.wait_for(|c| c.n > 0)).await;
    assert!(
        matches!(waited, Ok(Err(CallError::OutOfSync(_)))),
        "wait_for on a replica that is out of sync answered {waited:?} (owner at {}, replica at {})",
        cache.get().n,
        replica.get().n
    );
}

// ---------------------------------------------------------------------------------------------
// Streams

#[pb::remote]
pub trait Sink {
    async fn take_first(&self, data: pb::stream::Stream<u32>) -> Result<Option<u32>, String>;
}

struct SinkImpl;

impl Sink for SinkImpl {
    async fn take_first(&self, mut data: pb::stream::Stream<u32>) -> Result<Option<u32>, String> {
        let first = data.next().await.transpose().map_err(|e| e.to_string())?;
        // `data` is dropped here: the source is released.
        Ok(first)
    }
}

/// docs/guide/streaming.md: "Dropping the `Stream` releases the source: the producer's
/// next `send` fails with `stream::Closed`, and `Sender::closed().await` completes."
#[tokio::test(start_paused = true)]
async fn a_remote_consumer_dropping_the_stream_closes_the_sender() {
    let (_server, client) = memory_pair(SinkRef::new(SinkImpl)).await;
    let sink: SinkRef = client.root();
    let (tx, rx) = pb::stream::channel::<u32>(4);
    tx.send(7).await.unwrap();
    tx.send(8).await.unwrap();
    assert_eq!(sink.take_first(rx).await.unwrap(), Some(7));
    let closed = tokio::time::timeout(Duration::from_secs(10), tx.closed()).await;
    assert!(closed.is_ok(), "Sender::closed did not complete");
    assert_eq!(tx.send(9).await, Err(pb::stream::Closed));
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A value whose encoding fails.
#[derive(Debug, Clone)]
pub struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses to be encoded"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|_| Unencodable)
    }
}

impl pb::Copyable for Unencodable {}

#[pb::remote]
pub trait Taker {
    async fn take(&self, v: Unencodable) -> Result<(), ()>;
    async fn give(&self) -> Result<Unencodable, ()>;
}

struct TakerImpl(Arc<std::sync::atomic::AtomicU32>);

impl Taker for TakerImpl {
    async fn take(&self, _v: Unencodable) -> Result<(), ()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    async fn give(&self) -> Result<Unencodable, ()> {
        Ok(Unencodable)
    }
}

/// docs/guide/errors.md: "`Encode(msg)` | the arguments could not be encoded; nothing was
/// sent"; errors.md "`BadAnswer(msg)` | the answer could not be encoded by the callee".
#[tokio::test(start_paused = true)]
async fn arguments_that_do_not_encode_are_encode_and_nothing_is_sent() {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (server, client) = memory_pair(TakerRef::new(TakerImpl(runs.clone()))).await;
    let taker: TakerRef = client.root();
    assert!(settle(|| client.stats().unsent_bytes == 0).await);
    let before = client.stats().bytes_out;
    let r = taker.take(Unencodable).await;
    assert!(matches!(r, Err(CallError::Encode(_))), "{r:?}");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(client.stats().bytes_out, before, "bytes were sent");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    let r = taker.give().await;
    assert!(matches!(r, Err(CallError::BadAnswer(_))), "{r:?}");
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// Deadlines

/// docs/guide/errors.md and pb::deadline: "a deadline already passed fails the call
/// without running the handler. A call behaves the same whichever side its object lives on."
#[tokio::test(start_paused = true)]
async fn a_deadline_already_passed_runs_no_handler_remotely() {
    let kitchen = Arc::new(KitchenImpl::default());
    let (_server, client) = memory_pair(KitchenRef::from_arc(kitchen.clone())).await;
    let k: KitchenRef = client.root();
    let passed = tokio::time::Instant::now();
    tokio::time::advance(Duration::from_millis(5)).await;
    let r = pb::deadline::with_deadline(passed, k.add(1, 2)).await;
    assert_eq!(r, Err(CallError::DeadlineExceeded));
    assert_eq!(k.add(0, 0).await.unwrap(), 0);
    assert_eq!(*kitchen.calls.lock().unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// AMP

#[derive(pb::AmpCommand)]
#[amp(response = Blob)]
struct Fetch {
    len: u32,
}

#[derive(pb::AmpFields)]
struct Blob {
    data: pb::amp::Bytes,
}

#[derive(pb::AmpCommand)]
#[amp(response = Wide)]
struct FetchWide {}

#[derive(pb::AmpFields)]
struct Wide {
    a: pb::amp::Bytes,
    b: pb::amp::Bytes,
    c: pb::amp::Bytes,
    d: pb::amp::Bytes,
    e: pb::amp::Bytes,
    f: pb::amp::Bytes,
    g: pb::amp::Bytes,
    h: pb::amp::Bytes,
    i: pb::amp::Bytes,
    j: pb::amp::Bytes,
    k: pb::amp::Bytes,
    l: pb::amp::Bytes,
    m: pb::amp::Bytes,
    n: pb::amp::Bytes,
    o: pb::amp::Bytes,
    p: pb::amp::Bytes,
    q: pb::amp::Bytes,
    r: pb::amp::Bytes,
}

fn amp_pair() -> (pb::amp::AmpConnection, pb::amp::AmpConnection) {
    use pb::amp::{AmpConfig, AmpConnection, Locator};
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = AmpConnection::spawn(
        a,
        AmpConfig::default(),
        Locator::new()
            .respond(|Fetch { len }| async move {
                Ok(Blob {
                    data: vec![7u8; len as usize].into(),
                })
            })
            .respond(|FetchWide {}| async move {
                let v = || pb::amp::Bytes::from(vec![1u8; 60_000]);
                Ok(Wide {
                    a: v(),
                    b: v(),
                    c: v(),
                    d: v(),
                    e: v(),
                    f: v(),
                    g: v(),
                    h: v(),
                    i: v(),
                    j: v(),
                    k: v(),
                    l: v(),
                    m: v(),
                    n: v(),
                    o: v(),
                    p: v(),
                    q: v(),
                    r: v(),
                })
            }),
    );
    let client = AmpConnection::spawn(b, AmpConfig::default(), Locator::new());
    (server, client)
}

/// docs/guide/amp.md: "Arguments that do not parse, and responses that do not encode,
/// become `UNKNOWN` errors and close the connection, as in Twisted."
#[tokio::test]
async fn an_amp_response_with_a_value_over_65535_bytes_is_unknown_and_closes() {
    let (server, client) = amp_pair();
    assert_eq!(
        client.call(&Fetch { len: 10 }).await.unwrap().data.len(),
        10
    );
    let r =
        tokio::time::timeout(Duration::from_secs(10), client.call(&Fetch { len: 70_000 })).await;
    match r {
        Ok(Err(pb::amp::AmpCallError::Remote { code, .. })) => assert_eq!(code, "UNKNOWN"),
        other => panic!(
            "a response that does not encode answered {:?}",
            other.map(|r| r.map(|b| b.data.len()))
        ),
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), server.closed()).await;
    assert!(closed.is_ok(), "the responder's connection stayed open");
}

/// docs/guide/amp.md: a box is "at most 1 024 keys and 1 MiB"; "responses that
/// do not encode, become `UNKNOWN` errors and close the connection".
#[tokio::test]
async fn an_amp_response_over_the_peers_box_size_is_unknown_and_closes() {
    let (server, client) = amp_pair();
    let r = tokio::time::timeout(Duration::from_secs(10), client.call(&FetchWide {})).await;
    match r {
        Ok(Err(pb::amp::AmpCallError::Remote { code, .. })) => assert_eq!(code, "UNKNOWN"),
        other => panic!(
            "a response over the peer's box limit answered {:?}",
            other.map(|r| r.map(|_| "a response"))
        ),
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), server.closed()).await;
    assert!(closed.is_ok(), "the responder's connection stayed open");
}

// ---------------------------------------------------------------------------------------------
// More claims

/// docs/guide/streaming.md: "under a `pb::deadline`, an item that does not come in time
/// is `Some(Err(DeadlineExceeded))` for that `next()` only, and the stream goes on." (A
/// stream read where it was made.)
#[tokio::test(start_paused = true)]
async fn a_local_stream_under_a_deadline_goes_on() {
    let (tx, mut rx) = pb::stream::channel::<u32>(4);
    let r = pb::deadline::with_timeout(Duration::from_secs(1), rx.next()).await;
    assert!(matches!(r, Some(Err(CallError::DeadlineExceeded))), "{r:?}");
    tx.send(5).await.unwrap();
    drop(tx);
    assert_eq!(rx.next().await, Some(Ok(5)));
    assert_eq!(rx.next().await, None);
}

/// docs/guide/references.md: "When the peer drops every clone of its replica,
/// the owner stops sending it updates: `Cache::observers()` counts the connections that
/// observe"; "When a connection ends, every export on it is dropped".
#[tokio::test(start_paused = true)]
async fn a_lost_connection_stops_observing() {
    let cache = Cache::new(Counter::default());
    let (server, client) = memory_pair(FeedRef::new(FeedImpl(cache.clone()))).await;
    let feed: FeedRef = client.root();
    let replica = feed.counter().await.unwrap();
    assert_eq!(cache.wait_for_observers(|n| n == 1).await, 1);
    client.abort();
    server.closed().await;
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        cache.wait_for_observers(|n| n == 0),
    )
    .await;
    assert_eq!(n, Ok(0));
    let w = tokio::time::timeout(Duration::from_secs(10), replica.wait_for(|c| c.n == 99)).await;
    assert_eq!(w, Ok(Err(CallError::Disconnected)));
}

#[pb::remote]
pub trait Boom {
    async fn boom(&self) -> Result<(), String>;
}

struct BoomImpl;

impl Boom for BoomImpl {
    async fn boom(&self) -> Result<(), String> {
        panic!("kaboom secret")
    }
}

/// docs/guide/errors.md: "A failure of one call never takes down the connection, or the
/// process: ... a handler that panics is caught: the caller gets `Internal("the handler
/// failed")`"; pb::deadline : "A call behaves the same whichever
/// side its object lives on."; references.md: a reference sent home "arrives as the
/// object itself ... and calls on it are local calls".
///
/// Remote, the panic is caught; on a stub whose object lives here, it unwinds into the caller.
#[tokio::test(start_paused = true)]
async fn a_handler_that_panics_in_a_local_call_is_internal_too() {
    let (server, client) = memory_pair(BoomRef::new(BoomImpl)).await;
    let b: BoomRef = client.root();
    assert_eq!(
        b.boom().await,
        Err(CallError::Internal("the handler failed".into()))
    );
    assert!(!server.is_closed());
    // The same stub type, its object in this process.
    let local = BoomRef::new(BoomImpl);
    let r = tokio::spawn(async move { local.boom().await }).await;
    assert!(
        matches!(r, Ok(Err(CallError::Internal(ref m))) if m == "the handler failed"),
        "a local call to a handler that panics gave {r:?}"
    );
}
