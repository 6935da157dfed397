//! Caches at their limits: a replica whose state comes as a split frame, one large update to an
//! observer that reads, and a cut that runs code updating the same cache.

mod common;

use std::time::Duration;

use bytes::Bytes;
use pb::{Cache, CacheState, Config, Replica};
use serde::{Deserialize, Serialize};

// ---- a cache whose state ends with a large shared byte string ------------------------------

/// A state holding one byte string, sent as a slice of the frame (`pb::zero_copy`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Blob {
    #[serde(with = "pb::zero_copy")]
    pub data: Bytes,
}

impl CacheState for Blob {
    type Update = u8;
    fn apply(&mut self, _update: &u8) {}
}

#[pb::remote]
pub trait Blobs {
    async fn blob(&self) -> Result<Replica<Blob>, ()>;
    /// The cache's state itself, not as a replica (a control: the same bytes on the wire).
    async fn plain(&self) -> Result<(u64, Blob), ()>;
}

struct BlobsImpl(Cache<Blob>);

impl Blobs for BlobsImpl {
    async fn blob(&self) -> Result<Replica<Blob>, ()> {
        Ok(self.0.replica())
    }
    async fn plain(&self) -> Result<(u64, Blob), ()> {
        Ok((self.0.version(), self.0.get()))
    }
}

/// The owner's cache holds 100 KiB; the answer carrying it comes as a split frame (its last
/// byte string, the state's data, is the tail). The replica must hold those 100 KiB.
#[tokio::test(start_paused = true)]
async fn a_replica_whose_state_ends_with_a_large_string_holds_that_string() {
    let data = Bytes::from((0..100 * 1024).map(|i| i as u8).collect::<Vec<u8>>());
    let cache = Cache::new(Blob { data: data.clone() });
    let (_server, client) = common::memory_pair(BlobsRef::new(BlobsImpl(cache.clone()))).await;
    let root: BlobsRef = client.root();
    // Control: the same state as a plain value (also a split frame) decodes whole.
    let (_, plain) = root.plain().await.unwrap();
    assert_eq!(plain.data, data, "control: a plain Blob decodes whole");
    let replica = root.blob().await.unwrap();
    println!(
        "owner's state: {} bytes; the replica's: {} bytes (version {}, error {:?})",
        cache.get().data.len(),
        replica.get().data.len(),
        replica.version(),
        replica.error()
    );
    assert_eq!(
        replica.get().data.len(),
        data.len(),
        "the replica decoded a different state than the owner sent"
    );
    assert_eq!(replica.get().data, data);
}

// ---- an update that fits the peer's frame, to a peer that reads ----------------------------

/// A state that counts the bytes of the updates applied to it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    async fn heap(&self) -> Result<Replica<Heap>, ()>;
    /// The replica, followed at once by an update of `len` bytes.
    async fn heap_then_update(&self, len: u64) -> Result<Replica<Heap>, ()>;
}

struct HeapsImpl(Cache<Heap>);

impl Heaps for HeapsImpl {
    async fn heap(&self) -> Result<Replica<Heap>, ()> {
        Ok(self.0.replica())
    }
    async fn heap_then_update(&self, len: u64) -> Result<Replica<Heap>, ()> {
        let heap = self.0.clone();
        // Runs once this answer is queued.
        tokio::spawn(async move { heap.update(vec![1; len as usize]).unwrap() });
        Ok(self.0.replica())
    }
}

/// Both peers accept frames of up to 64 MiB (the documented maximum), `max_unsent_bytes` is
/// the default. Nothing else is in flight and the observer reads: one update of 20 MiB, which
/// fits the observer's frame, reaches the replica, and the connection stays: only a backlog
/// already waiting when an update comes cuts it.
#[tokio::test(start_paused = true)]
async fn one_update_that_fits_the_frame_to_a_reading_observer_is_not_cut() {
    const LEN: usize = 20 << 20;
    let heap = Cache::new(Heap::default());
    let (server, client) = common::memory_pair_with(
        HeapsRef::new(HeapsImpl(heap.clone())),
        common::frames_of(64 << 20),
    )
    .await;
    let root: HeapsRef = client.root();
    let replica = root.heap().await.unwrap();
    assert_eq!(heap.observers(), 1);

    let sent = heap.update(vec![1; LEN]);
    println!(
        "Cache::update of {LEN} bytes -> {sent:?}; server closed: {} ({:?})",
        server.is_closed(),
        server.close_reason()
    );
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        replica.wait_for(|h| h.total == LEN as u64),
    )
    .await;
    println!("replica.wait_for -> {waited:?}");
    assert!(
        !server.is_closed(),
        "a reading observer was cut for one update within its frame: {:?}",
        server.close_reason()
    );
    assert!(matches!(waited, Ok(Ok(_))), "{waited:?}");
}

/// Both peers accept frames of up to 64 MiB. An update of 20 MiB that arrives before the
/// replica it is for has been decoded waits for it, as a smaller one would: what a replica
/// may buffer follows the connection's `max_frame_len`, not the default's 16 MiB.
#[tokio::test(start_paused = true)]
async fn an_update_in_a_large_frame_waits_for_its_replica_to_be_decoded() {
    const LEN: usize = 20 << 20;
    let heap = Cache::new(Heap::default());
    let (_server, client) = common::memory_pair_with(
        HeapsRef::new(HeapsImpl(heap.clone())),
        common::frames_of(64 << 20),
    )
    .await;
    let root: HeapsRef = client.root();
    let call = root.heap_then_update(LEN as u64);
    tokio::pin!(call);
    // Sent; the answer is not decoded until the update has arrived too.
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut call)
            .await
            .is_err()
    );
    let before = client.stats().bytes_in;
    assert!(common::settle(|| client.stats().bytes_in - before > LEN as u64).await);
    let replica = call.await.unwrap();
    assert_eq!(replica.error(), None);
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        replica.wait_for(|h| h.total == LEN as u64),
    )
    .await;
    assert!(matches!(waited, Ok(Ok(_))), "{waited:?}");
}

// ---- closing from inside Cache::update -----------------------------------------------------

/// A state that is the last update itself.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
pub trait Seat {
    async fn number(&self) -> u32;
}

/// A peer's seat in a lobby: when it goes, the lobby's presence cache says so.
struct SeatImpl {
    presence: Cache<Last>,
}

impl Seat for SeatImpl {
    async fn number(&self) -> u32 {
        1
    }
}

impl Drop for SeatImpl {
    fn drop(&mut self) {
        let _ = self.presence.update(b"a seat was left".to_vec());
    }
}

#[pb::remote]
pub trait Lobby {
    async fn presence(&self) -> Result<Replica<Last>, ()>;
    async fn join(&self) -> Result<SeatRef, ()>;
}

struct LobbyImpl(Cache<Last>);

impl Lobby for LobbyImpl {
    async fn presence(&self) -> Result<Replica<Last>, ()> {
        Ok(self.0.replica())
    }
    async fn join(&self) -> Result<SeatRef, ()> {
        Ok(SeatRef::new(SeatImpl {
            presence: self.0.clone(),
        }))
    }
}

/// The observer announced 64 KiB frames; the owner updates the presence cache with 100 KiB,
/// which reaches it in no form: the connection is cut (`CacheBehind`). The close drops the
/// peer's exports, among them its seat, whose `Drop` updates the same cache: `Cache::update`
/// returns (the cut runs in a task of its own, not under the cache's lock). Run on a thread of
/// its own, waited for a bounded time.
#[test]
fn a_cache_behind_close_that_drops_an_object_updating_the_cache_does_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let presence = Cache::new(Last::default());
            let (server, client) = common::memory_pair_configs(
                LobbyRef::new(LobbyImpl(presence.clone())),
                &Config::default(),
                &common::frames_of(64 * 1024),
            )
            .await;
            let root: LobbyRef = client.root();
            let replica = root.presence().await.unwrap();
            let seat = root.join().await.unwrap();
            assert_eq!(seat.number().await.unwrap(), 1);
            let _ = done_tx.send("set up".to_string());
            let r = presence.update(vec![7; 100 * 1024]);
            let _ = done_tx.send(format!(
                "update -> {r:?}; server closed {:?}",
                server.close_reason()
            ));
            drop((replica, seat));
        });
    });
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(60)).as_deref(),
        Ok("set up")
    );
    let finished = done_rx.recv_timeout(Duration::from_secs(20));
    println!("Cache::update that cut the connection: {finished:?}");
    assert!(
        finished.is_ok(),
        "Cache::update never returned: the close it made dropped an object whose Drop updates \
         the same cache, under the cache's `sending` lock (deadlock)"
    );
}

// ---- a replica read from a split frame, and an update from a thread of its own ----------------

/// Sent as pb sends a `Bytes` field marked `pb::zero_copy` (shared, so a large one ends a
/// split frame); read with `bytes`' own serde `Deserialize` (the zero_copy docs: "both ends
/// need not agree on using it").
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plain {
    #[serde(serialize_with = "pb::zero_copy::serialize")]
    pub data: Bytes,
}

impl CacheState for Plain {
    type Update = u8;
    fn apply(&mut self, _update: &u8) {}
}

#[pb::remote]
pub trait Plains {
    async fn replica(&self) -> Result<Replica<Plain>, ()>;
    /// The cache's state as a plain value (a control: the same bytes on the wire).
    async fn plain(&self) -> Result<(u64, Plain), ()>;
}

struct PlainsImpl(Cache<Plain>);

impl Plains for PlainsImpl {
    async fn replica(&self) -> Result<Replica<Plain>, ()> {
        Ok(self.0.replica())
    }
    async fn plain(&self) -> Result<(u64, Plain), ()> {
        Ok((self.0.version(), self.0.get()))
    }
}

/// The answer carrying the replica comes split (its last string, 100 KiB, is the tail), and
/// the string is read with `Bytes`' own visitor, which does not take tails: the frame is read
/// whole at once (the probe says so), and the replica holds the whole state.
#[tokio::test(start_paused = true)]
async fn a_replica_read_whole_from_a_split_frame_holds_the_whole_state() {
    let data = Bytes::from((0..100 * 1024).map(|i| i as u8).collect::<Vec<u8>>());
    let cache = Cache::new(Plain { data: data.clone() });
    let (_server, client) = common::memory_pair(PlainsRef::new(PlainsImpl(cache.clone()))).await;
    let root: PlainsRef = client.root();
    let (_, plain) = root.plain().await.unwrap();
    assert_eq!(
        plain.data.len(),
        data.len(),
        "control: a plain value decodes whole"
    );
    let replica = root.replica().await.unwrap();
    println!(
        "owner's state: {} bytes; the replica's: {} bytes (version {}, error {:?})",
        cache.get().data.len(),
        replica.get().data.len(),
        replica.version(),
        replica.error()
    );
    assert_eq!(
        replica.get().data.len(),
        data.len(),
        "the replica silently holds the state of the dropped first decode (tail not in place)"
    );
}

// ---- Cache::update from a thread outside any runtime ---------------------------------------

#[pb::remote]
pub trait Board {
    async fn last(&self) -> Result<Replica<Last>, ()>;
}

struct BoardImpl(Cache<Last>);

impl Board for BoardImpl {
    async fn last(&self) -> Result<Replica<Last>, ()> {
        Ok(self.0.replica())
    }
}

/// `Cache::update` is a plain synchronous method: from a thread with no runtime, an update that
/// cannot reach an observer still cuts its connection (on the connection's own runtime), and
/// does not panic.
#[tokio::test(start_paused = true)]
async fn a_cache_update_from_a_plain_thread_that_cuts_an_observer_does_not_panic() {
    let last = Cache::new(Last::default());
    let (server, client) = common::memory_pair_configs(
        BoardRef::new(BoardImpl(last.clone())),
        &Config::default(),
        &common::frames_of(64 * 1024),
    )
    .await;
    let root: BoardRef = client.root();
    let replica = root.last().await.unwrap();
    assert_eq!(last.observers(), 1);

    let worker = {
        let last = last.clone();
        std::thread::spawn(move || last.update(vec![7; 100 * 1024]))
    };
    let joined = worker.join();
    println!(
        "Cache::update from a plain thread -> {:?}",
        joined.as_ref().map_err(|e| e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())))
    );
    assert!(
        joined.is_ok(),
        "Cache::update panicked on a thread outside the runtime"
    );
    let cut = common::settle(|| server.is_closed()).await;
    println!("server closed: {cut} ({:?})", server.close_reason());
    assert!(cut, "the observer that cannot follow the cache was not cut");
    drop(replica);
}
