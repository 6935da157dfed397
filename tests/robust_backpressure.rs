//! Output backpressure: a peer that sends without reading costs a bounded amount of memory and
//! is cut after `write_stall_timeout`; local callers wait instead of queueing without end; and
//! two pb peers flooding each other with large calls both ways still finish every call.
//!
//! Virtual time throughout: a sleep returns once every task is idle, so "after a sleep" means
//! "once the system has settled".

mod common;

use common::{HELLO, reverse_call};

use std::time::Duration;

use common::{KitchenImpl, KitchenRef};
use pb::proto::message::{Message, RefDesc};
use pb::{CloseReason, Config, Connection, Limits, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A small output limit, no keep-alive or idle timeout (only the stall timeout is under test).
fn config(max_unsent: usize) -> Config {
    Config {
        limits: Limits {
            max_unsent_bytes: max_unsent,
            max_in_flight_calls: 64,
            ..Limits::default()
        },
        keepalive_interval: None,
        idle_timeout: None,
        write_stall_timeout: Some(Duration::from_secs(30)),
        ..Config::default()
    }
}

/// A raw peer on `io` that completes the handshake, then sends `reverse` calls with 1 KiB
/// payloads and never reads. Returns how many calls it managed to write.
async fn flood_without_reading(mut io: DuplexStream, calls: u64) -> u64 {
    io.write_all(&HELLO).await.unwrap();
    let mut hello = [0u8; 20];
    io.read_exact(&mut hello).await.unwrap();
    for id in 1..=calls {
        if io.write_all(&reverse_call(id, &[7u8; 1024])).await.is_err() {
            return id - 1;
        }
    }
    calls
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_costs_bounded_memory_and_is_cut_when_writes_stall() {
    const MAX_UNSENT: usize = 64 * 1024;
    const CALLS: u64 = 100_000;
    let (ours, theirs) = tokio::io::duplex(16 * 1024);
    let flood = tokio::spawn(flood_without_reading(theirs, CALLS));
    let server = Connection::establish(
        ours,
        &config(MAX_UNSENT),
        Side::Server,
        Some(KitchenRef::new(KitchenImpl::default()).into()),
        None,
    )
    .await
    .unwrap();

    // Settled: the server has stopped reading, so the flood is stuck long before its end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !flood.is_finished(),
        "the server kept reading a peer that never reads"
    );
    let stats = server.stats();
    // What waits to be written: the limit, plus at most one read buffer's worth of answers
    // given before the reader noticed (each answer ~1 KiB, a read buffer at most 64 KiB).
    assert!(
        stats.unsent_bytes as usize <= MAX_UNSENT + 80 * 1024,
        "unsent output grew to {} bytes",
        stats.unsent_bytes
    );
    assert!(
        stats.unsent_bytes as usize > MAX_UNSENT,
        "the limit was reached"
    );
    // Everything the server read beyond the limit was held back, not run, and it stopped
    // reading after 64 held frames (`max_in_flight_calls`): about 80 answered calls, 64 held
    // and one read buffer, of 1 KiB each.
    assert!(
        stats.bytes_in < 256 * 1024,
        "read {} bytes from a peer that never reads",
        stats.bytes_in
    );
    assert!(!server.is_closed());

    // Nothing moves for the stall timeout: the server gives up on the peer.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(server.is_closed());
    assert_eq!(
        server.close_reason(),
        Some(CloseReason::WriteStalled(Duration::from_secs(30)))
    );
    // The flood's writes fail once the server has gone.
    let written = flood.await.unwrap();
    assert!(written < CALLS, "wrote {written} of {CALLS}");
}

/// A client (whose output backs up past `max_unsent` bytes) to a raw peer that has sent its
/// hello, read ours, and reads nothing more yet: the client, the peer's end, and its root.
async fn to_a_peer_that_reads_nothing(
    max_unsent: usize,
) -> (Connection, tokio::io::DuplexStream, KitchenRef) {
    let (ours, mut theirs) = tokio::io::duplex(16 * 1024);
    let peer = tokio::spawn(async move {
        theirs.write_all(&HELLO).await.unwrap();
        common::read_hello_frame(&mut theirs).await;
        theirs
    });
    let client = Connection::establish(ours, &config(max_unsent), Side::Client, None, None)
        .await
        .unwrap();
    let theirs = peer.await.unwrap();
    let root: KitchenRef = client.root();
    (client, theirs, root)
}

#[tokio::test(start_paused = true)]
async fn callers_wait_while_the_peer_is_not_reading() {
    const MAX_UNSENT: usize = 64 * 1024;
    let (client, mut theirs, root) = to_a_peer_that_reads_nothing(MAX_UNSENT).await;

    // 200 calls of 8 KiB each (1.6 MiB) to a peer that reads nothing yet.
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let root = root.clone();
            tokio::spawn(async move { root.reverse(vec![i as u8; 8 * 1024]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = client.stats();
    assert!(
        stats.unsent_bytes as usize <= MAX_UNSENT + 9 * 1024,
        "callers queued {} bytes past a full transport",
        stats.unsent_bytes
    );
    assert!(
        stats.tables.pending_calls < 200,
        "{} calls were queued although the peer reads nothing",
        stats.tables.pending_calls
    );

    // The peer starts reading: every call goes out, in the end. Count the calls that arrive.
    let mut seen = 0u32;
    let mut len = [0u8; 4];
    while seen < 200 {
        theirs.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        theirs.read_exact(&mut body).await.unwrap();
        assert_eq!(body[0], 1, "a call");
        seen += 1;
    }
    assert_eq!(client.stats().tables.pending_calls, 200);
    client.abort();
    for call in calls {
        assert!(call.await.unwrap().is_err(), "aborted before any answer");
    }
}

/// A peer that reads slowly, but reads something within every `write_stall_timeout`, is not
/// cut: a period that saw bytes go out starts the next.
#[tokio::test(start_paused = true)]
async fn a_peer_that_reads_slowly_but_within_the_stall_timeout_is_not_cut() {
    let (client, mut theirs, root) = to_a_peer_that_reads_nothing(64 * 1024).await;
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let root = root.clone();
            tokio::spawn(async move { root.reverse(vec![i as u8; 8 * 1024]).await })
        })
        .collect();
    // 4 KiB every 20 s for ten stall timeouts (30 s each): the writer waits all along.
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        theirs.read_exact(&mut chunk).await.unwrap();
        read.extend_from_slice(&chunk);
        assert!(!client.is_closed(), "{:?}", client.close_reason());
    }
    assert!(client.stats().unsent_bytes > 0, "the writer still waits");
    // Then the peer reads on: every call arrives.
    let mut seen = 0u32;
    let mut at = 0;
    while seen < 200 {
        while read.len() < at + 4 {
            theirs.read_exact(&mut chunk[..1]).await.unwrap();
            read.push(chunk[0]);
        }
        let len = u32::from_be_bytes(read[at..at + 4].try_into().unwrap()) as usize;
        let end = at + 4 + len;
        if read.len() < end {
            let mut rest = vec![0u8; end - read.len()];
            theirs.read_exact(&mut rest).await.unwrap();
            read.extend_from_slice(&rest);
        }
        assert_eq!(read[at + 4], 1, "a call");
        seen += 1;
        at = end;
    }
    assert!(!client.is_closed());
    client.abort();
    for call in calls {
        assert!(call.await.unwrap().is_err(), "aborted before any answer");
    }
}

#[tokio::test(start_paused = true)]
async fn two_peers_flooding_each_other_both_ways_finish_every_call() {
    flood_both_ways(config(64 * 1024)).await;
}

/// As above with a held-bytes cap below any frame: a side that waits for answers from its peer
/// does not stop reading at the cap (both would, and never resume: without that rule, both
/// connections end with `WriteStalled`).
#[tokio::test(start_paused = true)]
async fn peers_calling_each_other_never_both_stop_reading_at_the_held_bytes_cap() {
    let mut config = config(64 * 1024);
    config.limits.max_held_bytes = 1;
    flood_both_ways(config).await;
}

/// Each of two peers sends the other 64 calls of 60 KiB at once; every call must finish.
async fn flood_both_ways(config: Config) {
    const EACH: usize = 64;
    const SIZE: usize = 60 * 1024;
    let (a, b) = tokio::io::duplex(16 * 1024);
    let (a, b) = tokio::try_join!(
        Connection::establish(
            a,
            &config,
            Side::Server,
            Some(KitchenRef::new(KitchenImpl::default()).into()),
            None
        ),
        Connection::establish(
            b,
            &config,
            Side::Client,
            Some(KitchenRef::new(KitchenImpl::default()).into()),
            None
        ),
    )
    .unwrap();

    let mut calls = Vec::new();
    for (i, conn) in [&a, &b, &a, &b]
        .into_iter()
        .cycle()
        .take(2 * EACH)
        .enumerate()
    {
        let root: KitchenRef = conn.root();
        calls.push(tokio::spawn(async move {
            let sent = vec![(i % 251) as u8; SIZE];
            let got = root.reverse(sent.clone()).await;
            (got, sent)
        }));
    }
    for call in calls {
        let (got, mut sent) = call.await.unwrap();
        sent.reverse();
        let got = got.unwrap_or_else(|e| {
            panic!(
                "the call failed: {e:?}; a closed: {:?}, b closed: {:?}",
                a.close_reason(),
                b.close_reason()
            )
        });
        assert_eq!(got, sent);
    }
    assert!(!a.is_closed() && !b.is_closed());
    // Each side sent 64 calls and 64 answers of 60 KiB: far past the 64 KiB limit.
    assert!(a.stats().bytes_out as usize > 2 * EACH * SIZE);
    assert!(b.stats().bytes_out as usize > 2 * EACH * SIZE);
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_tips_the_output_over_the_limit_still_goes_out_at_once() {
    // With a 16-byte limit, the server's hello and one answer are over it as soon as the call
    // has been handled: the reader moves them to the write queue (so they count), and they
    // must still be written at once, not at the next keep-alive ping.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        Connection::establish(
            ours,
            &config(16),
            Side::Server,
            Some(KitchenRef::new(KitchenImpl::default()).into()),
            None,
        )
        .await
        .unwrap()
    });
    let mut batch = HELLO.to_vec();
    batch.extend_from_slice(&reverse_call(1, &[7u8; 300]));
    theirs.write_all(&batch).await.unwrap();
    let _server = server.await.unwrap();
    let mut hello = [0u8; 20];
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(1), async {
        theirs.read_exact(&mut hello).await.unwrap();
        theirs.read_exact(&mut len).await.unwrap();
    })
    .await
    .expect("the hello and the answer are written at once");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    theirs.read_exact(&mut body).await.unwrap();
    assert_eq!(body[0], 2, "an answer");
    assert!(body.len() > 300);
}

/// Held-back frames are capped by bytes, not only by count: a peer that never reads and sends
/// large calls makes the server hold at most `Limits::max_held_bytes` of them (default 32 MiB)
/// before it stops reading, where the count alone (`max_in_flight_calls`, 1 024 calls of up to
/// `max_frame_len`) would let it hold gigabytes.
#[tokio::test(start_paused = true)]
async fn held_back_calls_are_capped_by_bytes() {
    const MAX_UNSENT: usize = 64 * 1024;
    const CALL: usize = 60 * 1024;
    const CALLS: u64 = 1000;
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let flood = tokio::spawn(async move {
        theirs.write_all(&HELLO).await.unwrap();
        let mut hello = [0u8; 20];
        theirs.read_exact(&mut hello).await.unwrap();
        for id in 1..=CALLS {
            if theirs
                .write_all(&reverse_call(id, &[7u8; CALL]))
                .await
                .is_err()
            {
                return id - 1;
            }
        }
        CALLS
    });
    let config = Config {
        limits: Limits {
            max_unsent_bytes: MAX_UNSENT,
            ..Limits::default()
        },
        keepalive_interval: None,
        idle_timeout: None,
        write_stall_timeout: None,
        ..Config::default()
    };
    let held_cap = config.limits.max_held_bytes;
    assert_eq!(held_cap, 32 << 20, "the default");
    let server = Connection::establish(
        ours,
        &config,
        Side::Server,
        Some(KitchenRef::new(KitchenImpl::default()).into()),
        None,
    )
    .await
    .unwrap();
    // Settled: the server has stopped reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !flood.is_finished(),
        "the server read all {} MiB of a peer that never reads",
        (CALLS as usize * CALL) >> 20
    );
    // Read: the answered calls (until the output was over its limit), the held ones (up to the
    // cap, plus the frame that crossed it) and one read buffer.
    let read = server.stats().bytes_in as usize;
    assert!(
        read <= held_cap + MAX_UNSENT + 3 * CALL + 64 * 1024,
        "read {read} bytes, with {held_cap} held at most"
    );
    assert!(!server.is_closed());
}

// ---- held calls and the frames that may overtake them ---------------------------------------

/// Keeps the references it is given; answers large blobs (to congest its output) and takes a
/// replica.
#[pb::remote]
pub trait Keeper {
    async fn keep(&self, r: pb::ObjectRef) -> Result<(), ()>;
    async fn blob(&self, n: u32) -> Result<Vec<u8>, ()>;
    async fn take(&self, c: pb::Replica<Tally>) -> Result<(), ()>;
}

#[derive(Default)]
struct TheKeeper {
    kept: std::sync::Arc<std::sync::Mutex<Vec<pb::ObjectRef>>>,
    replica: std::sync::Arc<std::sync::Mutex<Option<pb::Replica<Tally>>>>,
}

impl Keeper for TheKeeper {
    async fn keep(&self, r: pb::ObjectRef) -> Result<(), ()> {
        self.kept.lock().unwrap().push(r);
        Ok(())
    }
    async fn blob(&self, n: u32) -> Result<Vec<u8>, ()> {
        Ok(vec![7; n as usize])
    }
    async fn take(&self, c: pb::Replica<Tally>) -> Result<(), ()> {
        *self.replica.lock().unwrap() = Some(c);
        Ok(())
    }
}

#[pb::copyable]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tally {
    pub n: u64,
}

impl pb::CacheState for Tally {
    type Update = u64;
    fn apply(&mut self, d: &u64) {
        self.n += d;
    }
}

/// A raw call `id` to the root's `method` with references `refs` and `payload`.
fn raw_call(id: u64, method: &str, refs: Vec<RefDesc>, payload: &[u8]) -> Vec<u8> {
    common::framed(Message::Call {
        id,
        target: 0,
        method: bytes::Bytes::copy_from_slice(method.as_bytes()),
        answer: true,
        deadline_ms: None,
        extras: Default::default(),
        refs,
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// The server's output over 64 KiB, no timers.
fn congestible() -> Config {
    Config {
        write_stall_timeout: None,
        ..config(64 * 1024)
    }
}

/// A peer sends its object 5 in a call that the congested server holds back, then revokes it:
/// the revocation must follow the call, as it did on the wire. It used to overtake it (and find
/// nothing to revoke); the call then made a live reference of what the peer had withdrawn, and
/// dropping it sent a release the peer counts as a violation.
#[tokio::test(start_paused = true)]
async fn a_revocation_waits_behind_the_held_call_that_sends_its_object() {
    let (ours, mut theirs) = tokio::io::duplex(16 * 1024);
    let keeper = TheKeeper::default();
    let kept = keeper.kept.clone();
    theirs.write_all(&HELLO).await.unwrap();
    let server = Connection::establish(
        ours,
        &congestible(),
        Side::Server,
        Some(KeeperRef::new(keeper).into()),
        None,
    )
    .await
    .unwrap();
    let mut hello = [0u8; 20];
    theirs.read_exact(&mut hello).await.unwrap();
    // Eight answers of 16 KiB, none read: the server's output is congested.
    for id in 1..=8 {
        // bincode's `(16384u32,)`.
        let call = raw_call(id, "blob", Vec::new(), &[251, 0x00, 0x40]);
        theirs.write_all(&call).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(server.stats().unsent_bytes > 64 * 1024, "congested");
    // Object 5 sent in a call (held back), then revoked.
    let keep = raw_call(100, "keep", vec![RefDesc::Sender(5)], &[0]);
    theirs.write_all(&keep).await.unwrap();
    let revoked = common::framed(Message::Revoked { object: 5 });
    theirs.write_all(&revoked).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The peer reads everything now: the output drains and the held call runs.
    let reader = tokio::spawn(async move {
        let mut bodies = Vec::new();
        while let Ok(Ok(body)) =
            tokio::time::timeout(Duration::from_secs(5), common::read_body(&mut theirs)).await
        {
            bodies.push(body);
        }
        bodies
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = kept.lock().unwrap().pop().expect("keep ran");
    assert!(!r.is_connected(), "a reference the peer revoked is dead");
    drop(r);
    let releases = reader.await.unwrap();
    let releases: Vec<_> = releases.iter().filter(|b| b.first() == Some(&4)).collect();
    assert!(
        releases.is_empty(),
        "released a revoked object: {releases:?}"
    );
}

/// A cache sent in a call that the congested server holds back, then updated: the update must
/// follow the call. It used to overtake it and be dropped (no replica yet), leaving the replica
/// a version behind with no error.
#[tokio::test(start_paused = true)]
async fn a_cache_update_waits_behind_the_held_call_that_sends_the_cache() {
    let (server_io, client_io) = tokio::io::duplex(16 * 1024);
    let gate = common::Gate::default();
    let keeper = TheKeeper::default();
    let replica = keeper.replica.clone();
    let config = congestible();
    let (server, client) = tokio::try_join!(
        Connection::establish(
            server_io,
            &config,
            Side::Server,
            Some(KeeperRef::new(keeper).into()),
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
    let root: KeeperRef = client.root();
    // The client stops reading; eight answers of 16 KiB congest the server's output.
    gate.set(true);
    let blobs: Vec<_> = (0..8)
        .map(|_| {
            let root = root.clone();
            tokio::spawn(async move { root.blob(16 * 1024).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(server.stats().unsent_bytes > 64 * 1024, "congested");
    // The cache goes in a call the server holds back; then it is updated.
    let cache = pb::Cache::new(Tally::default());
    let take = tokio::spawn({
        let (root, replica) = (root.clone(), cache.replica());
        async move { root.take(replica).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let version = cache.update(1).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    gate.set(false);
    for blob in blobs {
        blob.await.unwrap().unwrap();
    }
    take.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let replica = replica.lock().unwrap().clone().expect("take ran");
    assert_eq!(
        (replica.version(), replica.get().n, replica.error()),
        (version, 1, None)
    );
}

/// A peer that never reads congests the server's output, so that its calls are held back; then
/// it sends on and on, cancelling each call right after it. Each cancel takes its call out of
/// line (a cancel never waits), which leaves an empty place behind in the held frames, and the
/// pause counts only live held frames: the server must still stop reading such a peer (as it
/// stops one whose calls stay held), not read, and keep an empty place for, everything it sends.
#[tokio::test(start_paused = true)]
async fn a_peer_that_cancels_each_call_it_sends_while_held_back_is_not_read_without_bound() {
    const PAIRS: u64 = 200_000;
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let flood = tokio::spawn(async move {
        theirs.write_all(&HELLO).await.unwrap();
        let mut hello = [0u8; 20];
        theirs.read_exact(&mut hello).await.unwrap();
        // Sixteen answers of 16 KiB, none read: the server's output is congested, and the last
        // calls stay held for good.
        for id in 1..=16 {
            theirs
                .write_all(&reverse_call(id, &[7u8; 16 * 1024]))
                .await
                .unwrap();
        }
        let mut pair = Vec::new();
        for id in 100..100 + PAIRS {
            pair.clear();
            pair.extend(reverse_call(id, b"x"));
            pair.extend(common::framed(Message::Cancel { id }));
            if theirs.write_all(&pair).await.is_err() {
                return id - 100;
            }
        }
        PAIRS
    });
    let server = Connection::establish(
        ours,
        &congestible(),
        Side::Server,
        Some(KitchenRef::new(KitchenImpl::default()).into()),
        None,
    )
    .await
    .unwrap();
    // Settled: the server has stopped reading, or read everything.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = server.stats();
    assert!(stats.unsent_bytes > 64 * 1024, "congested");
    assert!(
        !flood.is_finished(),
        "the server read all {PAIRS} calls and cancels ({} bytes) of a peer that never reads",
        stats.bytes_in
    );
    assert!(!server.is_closed());
}
