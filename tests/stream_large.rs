//! Streams: 256 MiB through with bounded memory on both sides while small calls on the same
//! connection keep completing, in both directions.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use pb::ObjectRef;
use pb::stream::{self, Chunk, Stream};

const CHUNK: usize = 64 * 1024;
const CAPACITY: usize = 4;

#[pb::remote]
pub trait Files {
    /// A stream of `chunks` chunks of 64 KiB, each filled with its index.
    async fn download(&self, chunks: u32) -> Result<Stream<Chunk>, ()>;
    /// Reads a whole stream; returns (chunks, bytes, all chunks as expected).
    async fn upload(&self, data: Stream<Chunk>) -> Result<(u32, u64, bool), String>;
    async fn ping(&self) -> Result<u8, ()>;
}

#[derive(Default)]
struct FilesImpl {
    /// The most items the producer ever had waiting.
    peak_sender_buffered: Arc<AtomicUsize>,
    /// The most items the server-side consumer ever had buffered.
    peak_receiver_buffered: Arc<AtomicUsize>,
}

fn chunk(i: u32) -> Chunk {
    Chunk::from(vec![i as u8; CHUNK])
}

impl Files for FilesImpl {
    async fn download(&self, chunks: u32) -> Result<Stream<Chunk>, ()> {
        let (tx, rx) = stream::channel(CAPACITY);
        let peak = self.peak_sender_buffered.clone();
        tokio::spawn(async move {
            for i in 0..chunks {
                if tx.send(chunk(i)).await.is_err() {
                    return;
                }
                peak.fetch_max(tx.buffered(), Ordering::Relaxed);
            }
        });
        Ok(rx)
    }
    async fn upload(&self, mut data: Stream<Chunk>) -> Result<(u32, u64, bool), String> {
        let (mut n, mut bytes, mut good) = (0u32, 0u64, true);
        while let Some(c) = data.next().await {
            let c = c.map_err(|e| e.to_string())?;
            good &= c.len() == CHUNK && c.iter().all(|b| *b == n as u8);
            self.peak_receiver_buffered
                .fetch_max(data.buffered(), Ordering::Relaxed);
            n += 1;
            bytes += c.len() as u64;
        }
        Ok((n, bytes, good))
    }
    async fn ping(&self) -> Result<u8, ()> {
        Ok(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_stream_with_bounded_memory_while_small_calls_go_through() {
    const CHUNKS: u32 = 256 * 1024 * 1024 / CHUNK as u32;
    let files = Arc::new(FilesImpl::default());
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(FilesRef::from_arc(files.clone()));
    let conn = pb::Client::connect(server.local_addr()).await.unwrap();
    let f: FilesRef = conn.root();
    let mut data = f.download(CHUNKS).await.unwrap();

    let received = Arc::new(AtomicUsize::new(0));
    let consumer = tokio::spawn({
        let received = received.clone();
        async move {
            let (mut bytes, mut good, mut peak) = (0u64, true, 0usize);
            let mut i = 0u32;
            while let Some(c) = data.next().await {
                let c = c.unwrap();
                good &= c.len() == CHUNK && c.iter().all(|b| *b == i as u8);
                peak = peak.max(data.buffered());
                bytes += c.len() as u64;
                i += 1;
                received.store(i as usize, Ordering::Relaxed);
            }
            (i, bytes, good, peak)
        }
    });
    // While the stream flows, small calls on the same connection complete: each one returns
    // before the stream has finished.
    while received.load(Ordering::Relaxed) < 64 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        assert_eq!(f.ping().await, Ok(1));
    }
    let at_ping = received.load(Ordering::Relaxed);
    assert!(
        at_ping < CHUNKS as usize,
        "the small calls waited for the whole stream ({at_ping} chunks)"
    );

    let (n, bytes, good, receiver_peak) = consumer.await.unwrap();
    assert_eq!(n, CHUNKS);
    assert_eq!(bytes, 256 * 1024 * 1024);
    assert!(good, "every chunk arrived intact and in order");
    // Bounded memory: the producer never ran more than the channel's capacity ahead, and the
    // consumer never held more than one pulled batch.
    let sender_peak = files.peak_sender_buffered.load(Ordering::Relaxed);
    println!(
        "peak buffered: sender {} KiB, receiver {} KiB, of 262144 KiB streamed; pings answered after {at_ping} chunks",
        sender_peak * CHUNK / 1024,
        receiver_peak * CHUNK / 1024
    );
    assert!(
        sender_peak <= CAPACITY,
        "sender buffered {sender_peak} chunks"
    );
    assert!(
        receiver_peak < 8,
        "receiver buffered {receiver_peak} chunks"
    );
    conn.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_passed_as_an_argument_and_a_producer_that_fails() {
    let files = Arc::new(FilesImpl::default());
    let (_server, client) = common::memory_pair(FilesRef::from_arc(files.clone())).await;
    let f: FilesRef = client.root();
    let (tx, rx) = stream::channel(2);
    let producer = tokio::spawn(async move {
        for i in 0..256u32 {
            tx.send(chunk(i)).await.unwrap();
        }
    });
    assert_eq!(f.upload(rx).await, Ok((256, 256 * CHUNK as u64, true)));
    producer.await.unwrap();
    assert!(files.peak_receiver_buffered.load(Ordering::Relaxed) < 8);
    // A producer that fails: the consumer sees the error.
    let (tx, rx) = stream::channel::<Chunk>(2);
    tokio::spawn(async move {
        tx.send(chunk(0)).await.unwrap();
        tx.fail("disk on fire").await.unwrap();
    });
    match f.upload(rx).await {
        Err(pb::CallError::Remote(m)) => assert!(m.contains("disk on fire"), "{m}"),
        other => panic!("expected the producer's error, got {other:?}"),
    }
    // A consumer that goes away stops the producer.
    let mut data = f.download(1_000_000).await.unwrap();
    assert!(data.next().await.is_some());
    drop(data);
    assert!(common::settle(|| client.stats().tables.imported == 0).await);
}

#[pb::remote]
pub trait Tap {
    /// A stream of `chunks` chunks of `size` bytes, the producer free to run 8 ahead.
    async fn download(&self, chunks: u32, size: u32) -> Result<Stream<Chunk>, ()>;
}

struct TapImpl;

impl Tap for TapImpl {
    async fn download(&self, chunks: u32, size: u32) -> Result<Stream<Chunk>, ()> {
        let (tx, rx) = stream::channel(8);
        tokio::spawn(async move {
            for i in 0..chunks {
                let chunk = Chunk::from(vec![i as u8; size as usize]);
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Reads `chunks` chunks of `size` bytes from `tap` once its producer has run ahead, and
/// checks each.
async fn download_all(tap: &TapRef, chunks: u32, size: u32) {
    let mut s = tap.download(chunks, size).await.unwrap();
    // Settled (virtual time): the producer has filled the channel, so a pull finds 8 ready.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    for i in 0..chunks {
        let c = s.next().await.expect("an item").expect("not an error");
        assert_eq!(c.len(), size as usize);
        assert!(c.iter().all(|&b| b == i as u8), "chunk {i} in order");
    }
    assert!(s.next().await.is_none(), "the end");
}

/// Items that each fit a frame go however many are ready: a pull's batch stops before its
/// answer would pass the consumer's frame limit (it used to take 8, fail with
/// `LimitExceeded`, and lose them).
#[tokio::test(start_paused = true)]
async fn chunks_that_fit_a_frame_go_whatever_a_batch_of_them_would_take() {
    let config = pb::Config {
        limits: pb::Limits {
            max_frame_len: 1024 * 1024,
            ..pb::Limits::default()
        },
        ..pb::Config::default()
    };
    let (server, client) = common::memory_pair_with(TapRef::new(TapImpl), config).await;
    assert_eq!(
        server.peer_max_frame_len(),
        1024 * 1024,
        "what the consumer accepts"
    );
    let tap: TapRef = client.root();
    // A fifth of a frame each, then as large as a frame takes with its envelope.
    download_all(&tap, 16, 200 * 1024).await;
    download_all(&tap, 4, 1024 * 1024 - 100).await;
    // With the default limits (16 MiB frames): 3 MiB chunks.
    let (_server, client) = common::memory_pair(TapRef::new(TapImpl)).await;
    download_all(&client.root(), 12, 3 * 1024 * 1024).await;
}

#[pb::remote]
pub trait Handles {
    /// A stream of `items` items, each `per_item` references to fresh objects, the producer
    /// free to run 8 ahead.
    async fn handles(&self, items: u32, per_item: u32) -> Result<Stream<Vec<TapRef>>, ()>;
}

struct HandlesImpl;

impl Handles for HandlesImpl {
    async fn handles(&self, items: u32, per_item: u32) -> Result<Stream<Vec<TapRef>>, ()> {
        let (tx, rx) = stream::channel(8);
        tokio::spawn(async move {
            for _ in 0..items {
                let item = (0..per_item).map(|_| TapRef::new(TapImpl)).collect();
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Items that each carry a few references go however many are ready, as items that each fit a
/// frame do: a pull's batch must stay within the references the consumer takes in one message
/// (`max_refs_per_message`, announced in its hello), not only within its frame.
#[tokio::test(start_paused = true)]
async fn items_with_references_go_whatever_a_batch_of_them_would_carry() {
    let config = pb::Config {
        limits: pb::Limits {
            message: pb::proto::message::MessageLimits {
                max_refs_per_message: 16,
                ..Default::default()
            },
            ..pb::Limits::default()
        },
        ..pb::Config::default()
    };
    let (_server, client) = common::memory_pair_with(HandlesRef::new(HandlesImpl), config).await;
    let h: HandlesRef = client.root();
    // Each item carries 3 references, well within 16; 8 ready items would carry 24.
    let mut s = h.handles(16, 3).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let mut got = 0;
    while let Some(item) = s.next().await {
        match item {
            Ok(refs) => assert_eq!(refs.len(), 3),
            Err(e) => panic!("after {got} items of 16, the stream failed: {e:?}"),
        }
        got += 1;
    }
    assert_eq!(got, 16, "every item arrived");
}

/// A `Tap` that hands on the stream of another `Tap` it reaches over a connection: the stream's
/// consumer pulls through this node, which forwards each pull to the producer's node.
struct RelayTap(TapRef);

impl Tap for RelayTap {
    async fn download(&self, chunks: u32, size: u32) -> Result<Stream<Chunk>, ()> {
        self.0.download(chunks, size).await.map_err(|_| ())
    }
}

/// A stream passed on by a third party: producer (A) -> relay (B) -> consumer (C), where the
/// consumer accepts smaller frames (1 MiB) than the relay does (16 MiB). Every item fits the
/// consumer's frame alone, so every item must arrive, in order, whatever path the pulls take.
#[tokio::test(start_paused = true)]
async fn a_stream_forwarded_through_a_third_party_delivers_every_item_within_the_consumer_s_frame()
{
    let (_a, b_to_a) = common::memory_pair(TapRef::new(TapImpl)).await;
    let small = pb::Config {
        limits: pb::Limits {
            max_frame_len: 1024 * 1024,
            ..pb::Limits::default()
        },
        ..pb::Config::default()
    };
    let (_b, c_to_b) = common::memory_pair_with(TapRef::new(RelayTap(b_to_a.root())), small).await;
    let tap: TapRef = c_to_b.root();
    let mut s = tap.download(16, 200 * 1024).await.unwrap();
    // Settled (virtual time): the producer has filled its channel, so a pull finds 8 ready.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let mut got = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(c) => {
                assert_eq!(c.len(), 200 * 1024);
                got.push(c[0]);
            }
            Err(e) => panic!("after {} items of 16, the stream failed: {e:?}", got.len()),
        }
    }
    assert_eq!(got, (0..16u8).collect::<Vec<_>>(), "every item, in order");
}

/// A source of streams from before pulls said what the consumer takes: it reads the batch's
/// length only, and refuses other arguments (as the decoder refuses trailing bytes).
struct OldSource(AtomicU32);

static OLD_SOURCE: pb::dispatch::Interface = pb::dispatch::Interface {
    name: "Stream",
    methods: &["pull"],
};

impl pb::dispatch::Dispatch for OldSource {
    fn interface(&self) -> &'static pb::dispatch::Interface {
        &OLD_SOURCE
    }

    fn dispatch(
        self: Arc<Self>,
        mut call: pb::dispatch::IncomingCall,
    ) -> pb::dispatch::BoxFuture<pb::dispatch::Reply> {
        Box::pin(async move {
            let (max,): (u32,) = call.decode_args()?;
            // Three batches of up to `max` numbers, then the end.
            let start = self.0.fetch_add(max, Ordering::Relaxed);
            let batch: Vec<u32> = (start..(start + max).min(3 * max)).collect();
            pb::dispatch::encode_result(call.caller(), Ok::<_, String>(batch))
        })
    }
}

/// What an end from before pulls said what the consumer takes looks like to this one: a peer
/// whose `take` reads a stream with old pulls (the batch's length only), and whose `old` hands
/// out an [`OldSource`]. Written by hand, as the peer's build would be another.
#[pb::remote]
pub trait OldPeer {
    async fn take(&self, data: Stream<Chunk>) -> Result<u32, String>;
    async fn old(&self) -> Result<Stream<u32>, ()>;
}

static OLD_PEER: pb::dispatch::Interface = pb::dispatch::Interface {
    name: "OldPeer",
    methods: &["take", "old"],
};

struct OldPeerImpl;

impl pb::dispatch::Dispatch for OldPeerImpl {
    fn interface(&self) -> &'static pb::dispatch::Interface {
        &OLD_PEER
    }

    fn dispatch(
        self: Arc<Self>,
        mut call: pb::dispatch::IncomingCall,
    ) -> pb::dispatch::BoxFuture<pb::dispatch::Reply> {
        Box::pin(async move {
            match call.method() {
                "take" => {
                    let (source,): (ObjectRef,) = call.decode_args()?;
                    let pulled = source
                        .call::<_, Vec<Chunk>, String>("pull", &(8u32,))
                        .await
                        .map(|batch| batch.len() as u32)
                        .map_err(|e| e.to_string());
                    pb::dispatch::encode_result(call.caller(), pulled)
                }
                "old" => {
                    let source = ObjectRef::from_arc(Arc::new(OldSource(AtomicU32::new(0))));
                    pb::dispatch::encode_result(call.caller(), Ok::<_, ()>(source))
                }
                _ => call.no_such_method(&OLD_PEER),
            }
        })
    }
}

/// Pulls between ends of either age: a consumer that says nothing of what it takes (its pull
/// has the batch's length only) is answered, within the connection's limits; a source that
/// refuses to be told is asked again the old way.
#[tokio::test(start_paused = true)]
async fn pulls_work_between_old_and_new_ends_of_a_stream() {
    let (_server, client) = common::memory_pair(ObjectRef::from_arc(Arc::new(OldPeerImpl))).await;
    let peer: OldPeerRef = client.root();
    // An old consumer: one pull of 8 from a stream of 16 ready chunks.
    let (tx, rx) = stream::channel(16);
    for i in 0..16u8 {
        tx.send(Chunk::from(vec![i; 1024])).await.unwrap();
    }
    assert_eq!(peer.take(rx).await, Ok(8));
    // An old source, read through a new consumer's `Stream`.
    let s = peer.old().await.unwrap();
    assert_eq!(s.collect().await.unwrap(), (0..24).collect::<Vec<u32>>());
}

/// Bytes encoded by `Counted` items, over all tests of this file that use them.
static ENCODED: AtomicUsize = AtomicUsize::new(0);

/// A chunk that counts the bytes it is encoded as.
#[derive(Debug)]
pub struct Counted(Chunk);

impl serde::Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODED.fetch_add(self.0.len(), Ordering::SeqCst);
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Chunk::deserialize(d).map(Counted)
    }
}

#[pb::remote]
pub trait BigTap {
    /// `chunks` chunks of `size` bytes, the producer free to run 8 ahead.
    async fn download(&self, chunks: u32, size: u32) -> Result<Stream<Counted>, ()>;
}

struct BigTapImpl;

impl BigTap for BigTapImpl {
    async fn download(&self, chunks: u32, size: u32) -> Result<Stream<Counted>, ()> {
        let (tx, rx) = stream::channel(8);
        tokio::spawn(async move {
            for i in 0..chunks {
                let chunk = Counted(Chunk::from(vec![i as u8; size as usize]));
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Items as large as the consumer's frame takes one at a time: the producer's side must not
/// encode (and allocate) a whole batch of them, many frames' worth, for each item it sends,
/// pull after pull. Bounded in bytes: what it encodes stays within a small multiple of what it
/// sends.
#[tokio::test(start_paused = true)]
async fn frame_sized_items_are_not_encoded_many_times_over_for_each_one_sent() {
    const SIZE: usize = 600 * 1024;
    const CHUNKS: u32 = 32;
    let config = pb::Config {
        limits: pb::Limits {
            max_frame_len: 1024 * 1024,
            ..pb::Limits::default()
        },
        ..pb::Config::default()
    };
    let (_server, client) = common::memory_pair_with(BigTapRef::new(BigTapImpl), config).await;
    let tap: BigTapRef = client.root();
    let mut s = tap.download(CHUNKS, SIZE as u32).await.unwrap();
    let mut sent = 0;
    while let Some(c) = s.next().await {
        sent += c.unwrap().0.len();
    }
    assert_eq!(sent, CHUNKS as usize * SIZE);
    let encoded = ENCODED.load(Ordering::SeqCst);
    assert!(
        encoded <= 2 * sent,
        "encoded {} MiB to send {} MiB ({:.1} times over)",
        encoded >> 20,
        sent >> 20,
        encoded as f64 / sent as f64
    );
}

#[pb::remote]
pub trait Ticker {
    /// `0..n`, one item every `gap_ms` milliseconds.
    async fn ticks(&self, n: u32, gap_ms: u64) -> Result<Stream<u32>, ()>;
}

struct TickerImpl;

impl Ticker for TickerImpl {
    async fn ticks(&self, n: u32, gap_ms: u64) -> Result<Stream<u32>, ()> {
        let (tx, rx) = stream::channel(2);
        tokio::spawn(async move {
            for i in 0..n {
                tokio::time::sleep(std::time::Duration::from_millis(gap_ms)).await;
                if tx.send(i).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// Many streams read at once on one connection, each waiting on a slow producer (so each has a
/// pull out): every stream delivers every item, in order, and the connection stays up. A
/// consumer cannot know how many calls the producer's side lets run at once (the hello does not
/// say), so reading many streams must not cost it the connection.
#[tokio::test(start_paused = true)]
async fn many_slow_streams_read_at_once_on_one_connection_all_complete() {
    const STREAMS: usize = 1100;
    let (server, client) = common::memory_pair(TickerRef::new(TickerImpl)).await;
    let t: TickerRef = client.root();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(t.ticks(3, 10).await.unwrap());
    }
    let mut readers = tokio::task::JoinSet::new();
    for s in streams {
        readers.spawn(async move {
            let all: Result<Vec<u32>, _> = s.collect().await;
            all
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = readers.join_next().await {
        match r.unwrap() {
            Ok(v) => assert_eq!(v, [0, 1, 2]),
            Err(e) => failed.push(e),
        }
    }
    let closed = (client.close_reason(), server.close_reason());
    failed.dedup();
    assert!(
        failed.is_empty() && closed == (None, None),
        "streams failed: {failed:?}; connection closed: {closed:?}"
    );
}
