//! Caches and streams at their limits: an update over the observer's frame, an observer that
//! does not read, a replica whose owner is gone, a producer that panics. None may leave a
//! replica silently stale, a backlog without bound, or a cut stream that looks complete.

mod common;

use std::time::Duration;

use pb::stream::{self, Stream};
use pb::{Cache, CacheState, Config, Connection, Limits, Replica, Side};

/// A state that counts the bytes of the updates applied to it.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heap {
    pub total: u64,
}

impl CacheState for Heap {
    type Update = Vec<u8>;
    fn apply(&mut self, update: &Vec<u8>) {
        self.total += update.len() as u64;
    }
}

#[pb::remote]
pub trait Heaps {
    /// The owner's cache.
    async fn heap(&self) -> Result<Replica<Heap>, ()>;
    /// A stream of `0..n`; the producer panics before item `panic_at`, if given.
    async fn numbers(&self, n: u32, panic_at: Option<u32>) -> Result<Stream<u32>, ()>;
}

struct HeapsImpl {
    heap: Cache<Heap>,
}

impl Heaps for HeapsImpl {
    async fn heap(&self) -> Result<Replica<Heap>, ()> {
        Ok(self.heap.replica())
    }
    async fn numbers(&self, n: u32, panic_at: Option<u32>) -> Result<Stream<u32>, ()> {
        let (tx, rx) = stream::channel(4);
        tokio::spawn(async move {
            for i in 0..n {
                if Some(i) == panic_at {
                    panic!("the producer has a bug at item {i}");
                }
                if tx.send(i).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

fn heaps(heap: &Cache<Heap>) -> HeapsRef {
    HeapsRef::new(HeapsImpl { heap: heap.clone() })
}

// ---- caches ---------------------------------------------------------------------------------

/// The observer announced a 64 KiB `max_frame_len`; the owner makes one update of 100 KiB. It
/// cannot go as an update: the cache's whole state goes instead, and the replica is in sync
/// (a replica that misses an update "never goes silently stale", references.md).
#[tokio::test(start_paused = true)]
async fn an_update_over_the_observers_frame_goes_as_the_whole_state() {
    let heap = Cache::new(Heap::default());
    let (_server, client) = common::memory_pair_configs(
        heaps(&heap),
        &Config::default(),
        &common::frames_of(64 * 1024),
    )
    .await;
    let root: HeapsRef = client.root();
    let replica = root.heap().await.unwrap();
    assert_eq!(heap.observers(), 1);

    let sent = heap.update(vec![7; 100 * 1024]);
    println!("Cache::update of 100 KiB -> {sent:?}");
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        replica.wait_for(|h| h.total == 100 * 1024),
    )
    .await;
    println!(
        "after 60 s: wait_for -> {}; replica version {}, owner version {}, error {:?}, connected {}",
        match &waited {
            Ok(r) => format!("{r:?}"),
            Err(_) => "still waiting".into(),
        },
        replica.version(),
        heap.version(),
        replica.error(),
        replica.is_connected()
    );
    // Right: the update was refused (`Err`), or it reached the replica, or the replica knows it
    // missed it (an error, or its connection closed, as RELIABILITY.md says).
    if let Ok(version) = sent {
        assert!(
            replica.version() == version || replica.error().is_some() || !replica.is_connected(),
            "the replica is silently stale: version {} of {version}, no error, still connected",
            replica.version()
        );
    }
}

/// A replica that reached the state it waits for, whose owner then closed the connection:
/// `wait_for` ("checked at once") finds the state, every time.
#[tokio::test(start_paused = true)]
async fn wait_for_a_state_the_replica_holds_succeeds_after_the_owner_is_gone() {
    let heap = Cache::new(Heap::default());
    let (server, client) = common::memory_pair(heaps(&heap)).await;
    let root: HeapsRef = client.root();
    let replica = root.heap().await.unwrap();
    heap.update(vec![1; 10]).unwrap();
    replica.wait_for(|h| h.total == 10).await.unwrap();
    // The owner closes gracefully (nothing runs: it closes at once).
    server.close().await;
    assert!(common::settle(|| !replica.is_connected()).await);
    assert_eq!(replica.get().total, 10, "the state is there");

    let mut failed = Vec::new();
    for i in 0..64 {
        if let Err(e) = replica.wait_for(|h| h.total == 10).await {
            failed.push((i, e));
        }
    }
    println!(
        "{} of 64 waits for a state the replica holds failed: first {:?}",
        failed.len(),
        failed.first()
    );
    assert!(failed.is_empty(), "{} of 64 failed", failed.len());
}

/// An observer that stops reading while the owner goes on updating: the backlog stays bounded
/// (past `UPDATE_BACKLOG` times `max_unsent_bytes` the observer is cut).
#[tokio::test(start_paused = true)]
async fn updates_to_an_observer_that_does_not_read_are_bounded() {
    const MAX_UNSENT: usize = 64 * 1024;
    let heap = Cache::new(Heap::default());
    let config = Config {
        limits: Limits {
            max_unsent_bytes: MAX_UNSENT,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (server_io, client_io) = tokio::io::duplex(16 * 1024);
    let gate = common::Gate::default();
    let (server, client) = tokio::try_join!(
        Connection::establish(
            server_io,
            &config,
            Side::Server,
            Some(heaps(&heap).into()),
            None
        ),
        Connection::establish(
            common::Gated(client_io, gate.clone()),
            &config,
            Side::Client,
            None,
            None
        ),
    )
    .unwrap();
    let root: HeapsRef = client.root();
    let replica = root.heap().await.unwrap();
    assert_eq!(heap.observers(), 1);
    // The observer stops reading; the owner goes on updating (2 000 updates of 8 KiB).
    gate.set(true);
    for _ in 0..2_000 {
        heap.update(vec![0; 8 * 1024]).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let unsent = server.stats().unsent_bytes;
    println!(
        "unsent to the observer that does not read: {unsent} bytes (max_unsent_bytes {MAX_UNSENT}); closed {}",
        server.is_closed()
    );
    assert!(
        server.is_closed() || (unsent as usize) < 16 * MAX_UNSENT,
        "{unsent} bytes queued for a peer that reads nothing"
    );
    drop(replica);
}

// ---- streams --------------------------------------------------------------------------------

/// The producer panics after 3 of 10 items: its `Sender` is dropped while unwinding, and the
/// consumer reads a failure, not a shorter complete stream ("a stream cut short never looks
/// like a shorter complete one", streaming.md).
#[tokio::test(start_paused = true)]
async fn a_producer_that_panics_mid_stream_fails_the_stream() {
    let heap = Cache::new(Heap::default());
    let (_server, client) = common::memory_pair(heaps(&heap)).await;
    let root: HeapsRef = client.root();
    let numbers = root.numbers(10, Some(3)).await.unwrap();
    let got = numbers.collect().await;
    println!("a stream of 10 whose producer panicked at item 3 reads as: {got:?}");
    assert!(got.is_err(), "a cut stream read as complete: {got:?}");
}

/// A state that is the last update itself: as large as it.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Last {
    pub data: Vec<u8>,
}

impl CacheState for Last {
    type Update = Vec<u8>;
    fn apply(&mut self, update: &Vec<u8>) {
        self.data = update.clone();
    }
}

#[pb::remote]
pub trait Lasts {
    async fn last(&self) -> Result<Replica<Last>, ()>;
}

struct LastsImpl(Cache<Last>);

impl Lasts for LastsImpl {
    async fn last(&self) -> Result<Replica<Last>, ()> {
        Ok(self.0.replica())
    }
}

/// An update over the observer's frame whose whole state is over it too cannot reach the
/// replica at all: the connection is cut (`CloseReason::CacheBehind`), and the replica knows it
/// is no longer followed rather than going silently stale.
#[tokio::test(start_paused = true)]
async fn an_update_that_cannot_reach_the_observer_in_any_form_cuts_the_link() {
    let last = Cache::new(Last::default());
    let (server, client) = common::memory_pair_configs(
        LastsRef::new(LastsImpl(last.clone())),
        &Config::default(),
        &common::frames_of(64 * 1024),
    )
    .await;
    let root: LastsRef = client.root();
    let replica = root.last().await.unwrap();
    last.update(vec![7; 100 * 1024]).unwrap();
    // Cut from a task of its own (the update holds the cache's lock).
    server.closed().await;
    assert!(matches!(
        server.close_reason(),
        Some(pb::CloseReason::CacheBehind(why)) if why.contains("max_frame_len")
    ));
    let waited = replica.wait_for(|l| !l.data.is_empty()).await;
    assert!(
        matches!(waited, Err(pb::CallError::Disconnected)),
        "{waited:?}"
    );
}
