//! Cacheable objects: the replica is created, updated in order, observation stops when it is
//! dropped, sending the same cache twice reuses the replica (Twisted's `test_cache`), and a
//! replica dropped and fetched again while the owner updates follows every update.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pb::{Cache, CacheState, Replica};

#[pb::copyable]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Board {
    pub lines: Vec<String>,
}

#[pb::copyable]
#[derive(Debug, Clone)]
pub enum Edit {
    Push(String),
    Clear,
}

impl CacheState for Board {
    type Update = Edit;
    fn apply(&mut self, update: &Edit) {
        match update {
            Edit::Push(l) => self.lines.push(l.clone()),
            Edit::Clear => self.lines.clear(),
        }
    }
}

#[pb::remote]
pub trait Studio {
    async fn board(&self) -> Result<Replica<Board>, ()>;
    async fn write(&self, line: String) -> Result<u64, ()>;
}

struct StudioImpl {
    board: Cache<Board>,
}

impl Studio for StudioImpl {
    async fn board(&self) -> Result<Replica<Board>, ()> {
        // What the owner sends is a view of its cache; the peer receives a remote replica.
        Ok(self.board.replica())
    }
    async fn write(&self, line: String) -> Result<u64, ()> {
        self.board.update(Edit::Push(line)).map_err(|_| ())
    }
}

fn serve(board: &Cache<Board>) -> StudioRef {
    StudioRef::new(StudioImpl {
        board: board.clone(),
    })
}

#[tokio::test]
async fn replica_created_updated_in_order_and_released() {
    let board = Cache::new(Board {
        lines: vec!["first".into()],
    });
    let (server, client) = common::memory_pair(serve(&board)).await;
    let studio: StudioRef = client.root();
    let replica = studio.board().await.unwrap();
    assert_eq!(replica.get().lines, ["first"]);
    assert_eq!(board.observers(), 1);
    // Updates from the owner reach the replica, in order.
    for i in 0..100 {
        board.update(Edit::Push(format!("line {i}"))).unwrap();
    }
    let got = replica.wait_for(|b| b.lines.len() == 101).await.unwrap();
    let expected: Vec<String> = std::iter::once("first".to_string())
        .chain((0..100).map(|i| format!("line {i}")))
        .collect();
    assert_eq!(got.lines, expected);
    assert_eq!(replica.version(), 100);
    // Updates made through a call reach it too.
    assert_eq!(studio.write("via call".into()).await, Ok(101));
    let got = replica
        .wait_for(|b| b.lines.last().map(String::as_str) == Some("via call"))
        .await
        .unwrap();
    assert_eq!(got.lines.len(), 102);
    // Subscribers see changes.
    let mut rx = replica.subscribe();
    board.update(Edit::Clear).unwrap();
    rx.changed().await.unwrap();
    assert!(rx.borrow().value.lines.is_empty());

    // Dropping the replica stops the observation: the owner learns it and sends no more.
    drop(replica);
    drop(rx);
    assert_eq!(board.wait_for_observers(|n| n == 0).await, 0);
    assert_eq!(server.stats().tables.exported, 0);
    let before = client.stats().bytes_in;
    board.update(Edit::Push("unseen".into())).unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        client.stats().bytes_in,
        before,
        "no update is sent to a peer that stopped observing"
    );
}

#[tokio::test]
async fn sending_the_same_cache_twice_reuses_the_replica() {
    let board = Cache::new(Board::default());
    let (_server, client) = common::memory_pair(serve(&board)).await;
    let studio: StudioRef = client.root();
    let a = studio.board().await.unwrap();
    board.update(Edit::Push("x".into())).unwrap();
    let b = studio.board().await.unwrap();
    assert!(a == b, "one replica per cache per connection");
    assert_eq!(client.stats().tables.imported, 1);
    assert_eq!(b.wait_for(|s| s.lines == ["x"]).await.unwrap().lines, ["x"]);
    drop(a);
    // Still observed through `b`.
    board.update(Edit::Push("y".into())).unwrap();
    assert_eq!(
        b.wait_for(|s| s.lines.len() == 2).await.unwrap().lines,
        ["x", "y"]
    );
    assert_eq!(board.observers(), 1);
    drop(b);
    assert_eq!(board.wait_for_observers(|n| n == 0).await, 0);
}

#[tokio::test]
async fn every_observing_peer_is_updated_and_disconnect_stops_observing() {
    let board = Cache::new(Board::default());
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (server, client) = common::memory_pair(serve(&board)).await;
        let replica = client.root::<StudioRef>().board().await.unwrap();
        peers.push((server, client, replica));
    }
    assert_eq!(board.observers(), 3);
    board.update(Edit::Push("to all".into())).unwrap();
    for (_, _, r) in &peers {
        assert_eq!(
            r.wait_for(|b| !b.lines.is_empty()).await.unwrap().lines,
            ["to all"]
        );
    }
    // One peer's connection goes: it stops observing; the others go on.
    let (server, client, replica) = peers.pop().unwrap();
    server.abort();
    client.closed().await;
    assert_eq!(board.wait_for_observers(|n| n == 2).await, 2);
    assert!(!replica.is_connected());
    assert!(
        replica.wait_for(|_| false).await.is_err(),
        "a dead replica does not wait forever"
    );
    board.update(Edit::Push("to two".into())).unwrap();
    for (_, _, r) in &peers {
        assert_eq!(
            r.wait_for(|b| b.lines.len() == 2).await.unwrap().lines,
            ["to all", "to two"]
        );
    }
}

#[pb::remote]
pub trait Gallery {
    async fn board(&self) -> Result<Replica<Board>, ()>;
    async fn is_mine(&self, board: Replica<Board>) -> Result<bool, ()>;
}

struct GalleryImpl(Cache<Board>);

impl Gallery for GalleryImpl {
    async fn board(&self) -> Result<Replica<Board>, ()> {
        Ok(self.0.replica())
    }
    async fn is_mine(&self, board: Replica<Board>) -> Result<bool, ()> {
        Ok(board.is_local() && board == self.0.replica())
    }
}

#[tokio::test]
async fn a_replica_sent_home_arrives_as_the_owners_cache() {
    let board = Cache::new(Board::default());
    let (_server, client) = common::memory_pair(GalleryRef::new(GalleryImpl(board.clone()))).await;
    let gallery: GalleryRef = client.root();
    let replica = gallery.board().await.unwrap();
    assert!(!replica.is_local());
    // Sent back to its owner, it is the owner's own cache again.
    assert_eq!(gallery.is_mine(replica.clone()).await, Ok(true));
    // Another cache, owned by the client, is not.
    let other = Cache::new(Board::default());
    assert_eq!(gallery.is_mine(other.replica()).await, Ok(false));
    // A remote replica cannot be passed on as if it were the cache.
    assert!(matches!(
        pb::ObjectRef::from(ThingHolder::new())
            .call::<_, (), ()>("take", &(replica,))
            .await,
        Err(pb::CallError::Encode(_))
    ));
}

#[pb::remote]
pub trait Thing {
    async fn take(&self, board: Replica<Board>) -> Result<(), ()>;
}

struct ThingHolder;

impl ThingHolder {
    #[allow(clippy::new_ret_no_self)]
    fn new() -> ThingRef {
        ThingRef::new(ThingHolder)
    }
}

impl Thing for ThingHolder {
    async fn take(&self, _board: Replica<Board>) -> Result<(), ()> {
        Ok(())
    }
}

// ---- fetching a replica again while the owner updates ----------------------------------------

#[pb::copyable]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Counter {
    pub n: u64,
}

impl CacheState for Counter {
    type Update = u64;
    fn apply(&mut self, d: &u64) {
        self.n += d;
    }
}

#[pb::remote]
pub trait Feed {
    async fn counter(&self) -> Result<Replica<Counter>, ()>;
    /// Updates the cache and answers its version: the answer follows every update sent before
    /// it, so a replica held when it arrives has that version or a later one.
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

/// Serves a [`Feed`] and updates the cache once more after each answer is encoded and before
/// it is written: what an update made meanwhile on another thread does (see
/// `refetching_on_a_multi_thread_runtime_misses_no_update`, which races for real).
struct UpdateBeforeAnswer {
    feed: pb::ObjectRef,
    cache: Cache<Counter>,
}

impl pb::dispatch::Dispatch for UpdateBeforeAnswer {
    fn interface(&self) -> &'static pb::dispatch::Interface {
        <FeedRef as pb::Remote>::INTERFACE
    }

    fn dispatch(
        self: Arc<Self>,
        call: pb::dispatch::IncomingCall,
    ) -> pb::dispatch::BoxFuture<pb::dispatch::Reply> {
        let answer = self.feed.dispatch(call);
        Box::pin(async move {
            let reply = answer.await;
            self.cache.update(1).expect("an update encodes");
            reply
        })
    }
}

/// Updates `cache` every virtual millisecond until the returned flag is set.
fn keep_updating(cache: &Cache<Counter>) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                cache.update(1).expect("an update encodes");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    (stop, task)
}

/// Wait (in virtual time) until `replica` reaches `version`; on failure, say where it stayed
/// while the owner went on updating it.
async fn reaches(replica: &Replica<Counter>, version: u64, owner: &Cache<Counter>) {
    let mut rx = replica.subscribe();
    let reached = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.version >= version),
    );
    if !matches!(reached.await, Ok(Ok(_))) {
        panic!(
            "the replica stayed at version {} for 5 s while the owner went from {version} to {} \
             (replica error: {:?})",
            replica.version(),
            owner.version(),
            replica.error()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn refetching_while_the_owner_updates_keeps_the_replica_current() {
    let cache = Cache::new(Counter::default());
    let root = UpdateBeforeAnswer {
        feed: FeedRef::new(FeedImpl(cache.clone())).into(),
        cache: cache.clone(),
    };
    let (server, client) = common::memory_pair(pb::ObjectRef::local(root)).await;
    let feed: FeedRef = client.root();
    let (stop, updater) = keep_updating(&cache);
    for i in 0..50 {
        // Dropped at once: its release crosses the next fetch, which the owner answers under
        // the same id.
        let replica = feed.counter().await.unwrap();
        let version = feed.bump().await.unwrap();
        // The answer to `bump` follows the update it made: the replica has it already.
        let had = replica.version();
        if had < version {
            eprintln!(
                "iteration {i}: the fetched replica is at version {had}, the owner at {version}"
            );
        }
        reaches(&replica, version, &cache).await;
        assert!(
            had >= version,
            "iteration {i}: the replica was late ({had} < {version})"
        );
        assert_eq!(
            replica.get().n,
            replica.version(),
            "every update applied once"
        );
        drop(replica);
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    updater.await.unwrap();
    // Nothing leaks: once the last replica's release is in, the owner exports nothing.
    assert!(common::settle(|| server.stats().tables.exported == 0).await);
    assert_eq!(cache.observers(), 0);
    assert_eq!(client.stats().tables.imported, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refetching_on_a_multi_thread_runtime_misses_no_update() {
    // The real race: the owner's updater runs on one worker while the other encodes the answer
    // that carries the cache. No timing is relied upon: `bump` is a barrier.
    let cache = Cache::new(Counter::default());
    let (_server, client) = common::memory_pair(FeedRef::new(FeedImpl(cache.clone()))).await;
    let feed: FeedRef = client.root();
    let stop = Arc::new(AtomicBool::new(false));
    let updater = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                cache.update(1).unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut missed = None;
    for i in 0..4000 {
        let replica = feed.counter().await.unwrap();
        let version = feed.bump().await.unwrap();
        if replica.version() < version {
            // Does it ever catch up? Ten more updates, each followed by its barrier.
            let stuck_at = replica.version();
            let mut last = version;
            for _ in 0..10 {
                last = feed.bump().await.unwrap();
            }
            missed = Some((i, stuck_at, version, replica.version(), last));
            break;
        }
        // One snapshot: the other worker may apply an update between two reads.
        let seen = replica.subscribe().borrow().clone();
        assert_eq!(seen.value.n, seen.version, "every update applied once");
    }
    stop.store(true, Ordering::Relaxed);
    updater.await.unwrap();
    if let Some((i, stuck_at, version, now, last)) = missed {
        panic!(
            "iteration {i}: the fetched replica was at version {stuck_at} when the owner was at \
             {version}; ten updates later it is at {now}, the owner at {last}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_refetch_with_no_updates_in_flight() {
    let cache = Cache::new(Counter::default());
    cache.update(5).unwrap();
    let (server, client) = common::memory_pair(FeedRef::new(FeedImpl(cache.clone()))).await;
    let feed: FeedRef = client.root();
    let first = feed.counter().await.unwrap();
    assert_eq!((first.version(), first.get().n), (1, 5));
    // Its release crosses the next fetch.
    drop(first);
    let again = feed.counter().await.unwrap();
    assert_eq!((again.version(), again.get().n), (1, 5));
    assert!(common::settle(|| client.stats().tables.imported == 1).await);
    assert_eq!(cache.observers(), 1);
    cache.update(2).unwrap();
    reaches(&again, 2, &cache).await;
    // This time the release arrives first: the next fetch is a new export.
    drop(again);
    assert!(common::settle(|| server.stats().tables.exported == 0).await);
    assert_eq!(cache.observers(), 0);
    let third = feed.counter().await.unwrap();
    assert_eq!((third.version(), third.get().n), (2, 7));
    cache.update(3).unwrap();
    reaches(&third, 3, &cache).await;
    assert_eq!(third.get().n, 10);
}

#[tokio::test(start_paused = true)]
async fn an_update_between_release_and_refetch() {
    let cache = Cache::new(Counter::default());
    let (server, client) = common::memory_pair(FeedRef::new(FeedImpl(cache.clone()))).await;
    let feed: FeedRef = client.root();
    // Dropped with no yield: the update leaves before the owner has the release, for a
    // reference the client no longer holds; the fetch that follows carries it in its state.
    let replica = feed.counter().await.unwrap();
    drop(replica);
    cache.update(1).unwrap();
    let replica = feed.counter().await.unwrap();
    assert_eq!(replica.version(), 1);
    cache.update(1).unwrap();
    reaches(&replica, 2, &cache).await;
    // The owner has the release: no update is sent, and the fetch is a new export.
    drop(replica);
    assert!(common::settle(|| server.stats().tables.exported == 0).await);
    cache.update(1).unwrap();
    let replica = feed.counter().await.unwrap();
    assert_eq!(replica.version(), 3);
    cache.update(1).unwrap();
    reaches(&replica, 4, &cache).await;
    assert_eq!(replica.get().n, 4);
}

#[tokio::test(start_paused = true)]
async fn a_replica_dropped_while_its_reference_is_sent_again_misses_no_update() {
    // The answer that sends the cache again is resolved by the connection (the reference is
    // the one the replica holds) before the caller decodes it; if the replica is dropped in
    // between, updates that arrive meanwhile must still reach the replica the caller decodes.
    let cache = Cache::new(Counter::default());
    let (_server, client) = common::memory_pair(FeedRef::new(FeedImpl(cache.clone()))).await;
    let feed: FeedRef = client.root();
    let held = feed.counter().await.unwrap();
    let outcome = client
        .root_ref()
        .call_raw("counter", bytes::Bytes::new(), Vec::new())
        .await
        .unwrap();
    drop(held);
    for _ in 0..3 {
        cache.update(1).unwrap();
    }
    let version = feed.bump().await.unwrap();
    let replica: Replica<Counter> = pb::dispatch::decode_outcome::<_, ()>(outcome).unwrap();
    reaches(&replica, version, &cache).await;
    assert_eq!(replica.get().n, version, "every update applied once");
}

#[tokio::test(start_paused = true)]
async fn updates_dropped_before_the_replica_is_decoded_are_reported() {
    // At most 4 096 updates are kept for a replica not decoded yet; past that they are
    // dropped, and the replica says so instead of silently staying behind.
    let cache = Cache::new(Counter::default());
    let (_server, client) = common::memory_pair(FeedRef::new(FeedImpl(cache.clone()))).await;
    let feed: FeedRef = client.root();
    let outcome = client
        .root_ref()
        .call_raw("counter", bytes::Bytes::new(), Vec::new())
        .await
        .unwrap();
    for _ in 0..5000 {
        cache.update(1).unwrap();
    }
    let version = feed.bump().await.unwrap();
    let replica: Replica<Counter> = pb::dispatch::decode_outcome::<_, ()>(outcome).unwrap();
    assert_eq!(
        replica.error(),
        Some(pb::ReplicaError::TooManyBuffered { max: 4096 })
    );
    assert_eq!(replica.version(), 4096, "what was kept is applied");
    let waited =
        tokio::time::timeout(Duration::from_secs(5), replica.wait_for(|c| c.n == version)).await;
    assert!(
        matches!(waited, Ok(Err(pb::CallError::OutOfSync(_)))),
        "{waited:?}"
    );
    // Dropped and fetched again, it is a fresh replica that follows the owner.
    drop(replica);
    assert!(common::settle(|| client.stats().tables.imported == 0).await);
    let replica = feed.counter().await.unwrap();
    assert_eq!(replica.error(), None);
    let version = feed.bump().await.unwrap();
    assert_eq!((replica.version(), replica.get().n), (version, version));
}

/// What a change stream yields, as (version, lines pushed or the whole state's lines).
fn describe(change: &pb::ReplicaChange<Board>) -> (u64, String) {
    match change {
        pb::ReplicaChange::State(s) => (s.version, format!("state {:?}", s.value.lines)),
        pb::ReplicaChange::Update { version, update } => (*version, format!("{update:?}")),
        _ => (change.version(), "other".into()),
    }
}

#[tokio::test]
async fn a_replica_sees_its_first_state_then_every_update_in_order() {
    let board = Cache::new(Board {
        lines: vec!["first".into()],
    });
    let (_server, client) = common::memory_pair(serve(&board)).await;
    let studio: StudioRef = client.root();
    let replica = studio.board().await.unwrap();
    // Both sides: the peer's replica, and the owner's own view.
    for view in [replica.clone(), board.replica()] {
        let mut changes = view.updates();
        let first = changes.next().await.unwrap();
        assert_eq!(describe(&first).1, "state [\"first\"]");
        let base = first.version();
        for i in 0..3 {
            board.update(Edit::Push(format!("l{i}"))).unwrap();
        }
        board.update(Edit::Clear).unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(describe(&changes.next().await.unwrap()));
        }
        // Every update, none coalesced, in version order.
        assert_eq!(
            got,
            [
                (base + 1, "Push(\"l0\")".to_string()),
                (base + 2, "Push(\"l1\")".to_string()),
                (base + 3, "Push(\"l2\")".to_string()),
                (base + 4, "Clear".to_string()),
            ]
        );
        // Back to one line for the next view.
        board.update(Edit::Push("first".into())).unwrap();
        replica.wait_for(|b| b.lines == ["first"]).await.unwrap();
    }
}

#[tokio::test]
async fn a_change_receiver_that_falls_behind_gets_the_whole_state() {
    let board = Cache::new(Board::default());
    let replica = board.replica();
    let mut changes = replica.updates();
    assert_eq!(changes.next().await.unwrap().version(), 0);
    // More than the receiver's buffer, unread.
    for i in 0..300 {
        board.update(Edit::Push(format!("{i}"))).unwrap();
    }
    let mut last = 0;
    let mut saw_state = false;
    while last < 300 {
        let change = changes.next().await.unwrap();
        assert!(change.version() > last, "in order");
        saw_state |= matches!(change, pb::ReplicaChange::State(_));
        last = change.version();
    }
    assert!(saw_state, "the missed updates came as a whole state");
    assert_eq!(replica.get().lines.len(), 300);
}
