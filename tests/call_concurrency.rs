//! Many calls in flight on one connection, answered out of order, each answer to its caller.

mod common;

use std::sync::Arc;

use common::*;
use tokio::task::JoinSet;

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_calls_answered_out_of_order() {
    let (server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = client.root();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut set = JoinSet::new();
    for i in 0..1000u64 {
        let k = k.clone();
        let order = order.clone();
        // Later calls answer sooner: the answers come back in reverse order of the calls.
        set.spawn(async move {
            let v = k.echo_after(i, 1000 - i).await.unwrap();
            order.lock().unwrap().push(i);
            (i, v)
        });
    }
    let mut seen = 0;
    while let Some(r) = set.join_next().await {
        let (sent, got) = r.unwrap();
        assert_eq!(sent, got, "answer routed to the wrong caller");
        seen += 1;
    }
    assert_eq!(seen, 1000);
    let order = order.lock().unwrap();
    assert_eq!(
        order.first(),
        Some(&999),
        "the last call should be answered first"
    );
    assert_eq!(order.last(), Some(&0));
    assert_eq!(client.stats().tables.pending_calls, 0);
    assert_eq!(server.stats().tables.in_flight_calls, 0);
}

#[tokio::test]
async fn concurrent_calls_over_tcp_from_many_tasks() {
    let (server, conn) = common::tcp_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = conn.root();
    let mut set = JoinSet::new();
    for i in 0..1000i64 {
        let k = k.clone();
        set.spawn(async move { (i, k.add(i, i).await.unwrap()) });
    }
    while let Some(r) = set.join_next().await {
        let (i, v) = r.unwrap();
        assert_eq!(v, 2 * i);
    }
    conn.close().await;
    server.shutdown().await;
}

/// A pair whose server runs at most 4 of the client's calls at once (and tolerates no
/// violation), and the client's stub.
async fn four_at_once() -> (pb::Connection, pb::Connection, KitchenRef) {
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 4;
    config.limits.max_violations = 0;
    let (server, client) = memory_pair_with(KitchenRef::new(KitchenImpl::default()), config).await;
    let k: KitchenRef = client.root();
    (server, client, k)
}

/// A call that arrives while `max_in_flight_calls` of the caller's calls run waits, unread,
/// until one of them ends, then runs: the caller cannot know the limit (it is not announced),
/// so it is never refused for it, nor counted as a violation.
#[tokio::test(start_paused = true)]
async fn calls_over_the_in_flight_limit_wait_for_a_running_one_to_end() {
    let (server, client, k) = four_at_once().await;
    let mut hanging = Vec::new();
    for _ in 0..4 {
        let k = k.clone();
        hanging.push(tokio::spawn(async move { k.hang().await }));
    }
    // Let the four reach the server.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(server.stats().tables.in_flight_calls, 4);
    let mut add = tokio::spawn({
        let k = k.clone();
        async move { k.add(1, 1).await }
    });
    let minute = std::time::Duration::from_secs(60);
    assert!(
        tokio::time::timeout(minute, &mut add).await.is_err(),
        "the fifth call waits while four run"
    );
    // One of the four is given up (cancelled on the server): the fifth runs.
    hanging.pop().unwrap().abort();
    let added = tokio::time::timeout(minute, add).await;
    assert!(matches!(added, Ok(Ok(Ok(2)))), "{added:?}");
    assert!(!client.is_closed() && !server.is_closed());
    for h in hanging {
        h.abort();
    }
}

/// A call held at the cap and given up before it runs is cancelled once it does (its cancel
/// follows it): it does not keep a place among the running calls for good.
#[tokio::test(start_paused = true)]
async fn a_held_call_given_up_does_not_keep_a_running_place() {
    let (server, _client, k) = four_at_once().await;
    let mut hanging = Vec::new();
    for _ in 0..5 {
        let k = k.clone();
        hanging.push(tokio::spawn(async move { k.hang().await }));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(server.stats().tables.in_flight_calls, 4);
    // The fifth, held, is given up; then one of the four.
    hanging.pop().unwrap().abort();
    hanging.pop().unwrap().abort();
    let minute = std::time::Duration::from_secs(60);
    let added = tokio::time::timeout(minute, k.add(2, 3)).await;
    assert!(matches!(added, Ok(Ok(5))), "{added:?}");
    assert!(
        common::settle(|| server.stats().tables.in_flight_calls == 3).await,
        "three run: the given-up fifth ran and was cancelled ({} run)",
        server.stats().tables.in_flight_calls
    );
    for h in hanging {
        h.abort();
    }
}

/// Runs [`batches_of_calls`] (within a minute) on a runtime of two workers or of one thread,
/// whose threads log `trace` events to a capture, and returns how often the server's reader
/// made way (its `trace` event).
fn ways_made_by_batches(workers: bool) -> usize {
    let capture = Capture::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish(),
    );
    let mut builder = if workers {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let on_start = dispatch.clone();
    let rt = builder
        .enable_all()
        .on_thread_start(move || {
            // Kept for the thread's life.
            std::mem::forget(tracing::dispatcher::set_default(&on_start));
        })
        .build()
        .unwrap();
    // A current-thread runtime runs on this thread.
    let _guard = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(60), batches_of_calls())
            .await
            .expect("every batch answered")
    });
    capture
        .text()
        .lines()
        .filter(|l| l.contains("reader makes way"))
        .count()
}

/// A peer writes its calls 16 at a time (as a peer with many calls in flight does), 20 times;
/// every call is answered, each answer right.
async fn batches_of_calls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, mut raw) = raw_peer(pb::Config::default()).await;
    let mut rbuf = Vec::new();
    for round in 0..20u64 {
        let mut batch = Vec::new();
        for i in 0..16u64 {
            let id = 1 + round * 16 + i;
            batch.extend(reverse_call(id, &id.to_le_bytes()));
        }
        raw.write_all(&batch).await.unwrap();
        let mut answered = Vec::new();
        while answered.len() < 16 {
            let mut buf = [0u8; 4096];
            let n = raw.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            rbuf.extend_from_slice(&buf[..n]);
            while rbuf.len() >= 4 {
                let len = u32::from_be_bytes([rbuf[0], rbuf[1], rbuf[2], rbuf[3]]) as usize;
                if rbuf.len() < 4 + len {
                    break;
                }
                let frame: Vec<u8> = rbuf.drain(..4 + len).skip(4).collect();
                match pb::proto::message::Message::decode(frame.into(), &Default::default()) {
                    Ok(pb::proto::message::Message::Answer {
                        id,
                        ok: true,
                        payload,
                        ..
                    }) => {
                        // `Ok(reversed bytes)`: bincode's length of 8, then the bytes.
                        let mut want = id.to_le_bytes();
                        want.reverse();
                        assert_eq!(payload.as_ref(), [&[8u8][..], &want].concat());
                        answered.push(id);
                    }
                    other => panic!("not an answer: {other:?}"),
                }
            }
        }
        answered.sort_unstable();
        let sent: Vec<u64> = (1 + round * 16..1 + round * 16 + 16).collect();
        assert_eq!(answered, sent, "round {round}");
    }
    assert_eq!(server.stats().tables.in_flight_calls, 0);
    server.close().await;
}

/// On a runtime of several workers, the server's reader makes way after batches of many
/// calls (once per batch that arrived whole), and answers them all the same.
#[test]
fn a_reader_on_a_multi_thread_runtime_makes_way_after_batches_of_calls() {
    let made = ways_made_by_batches(true);
    assert!((1..=20).contains(&made), "made way {made} times");
}

/// On one thread the same batches are answered and the reader never makes way.
#[test]
fn a_reader_on_one_thread_never_makes_way() {
    assert_eq!(ways_made_by_batches(false), 0);
}

/// Many tasks calling at once over TCP on a runtime of several workers, where the server's
/// reader sees batches of many calls and makes way after them (the client's, seeing batches
/// of answers, does not): every caller gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_calling_on_a_multi_thread_runtime_get_their_answers() {
    let (server, conn) = common::tcp_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = conn.root();
    let mut set = JoinSet::new();
    for t in 0..64i64 {
        let k = k.clone();
        set.spawn(async move {
            for i in 0..50i64 {
                let v = t * 1000 + i;
                assert_eq!(k.add(v, 1).await.unwrap(), v + 1);
            }
        });
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), all)
        .await
        .expect("every caller answered");
    assert_eq!(conn.stats().tables.pending_calls, 0);
    conn.close().await;
    server.shutdown().await;
}

/// More calls arrive than twice the cap on running calls (the caller cannot know the cap: it is
/// within its call window), and the running ones end only when the caller cancels them. The
/// cancels must still be read: a connection that stops reading then holds every call for good.
#[tokio::test(start_paused = true)]
async fn cancels_of_running_calls_are_read_while_many_calls_wait_at_the_cap() {
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 2;
    config.limits.max_violations = 0;
    let (server, client) = memory_pair_with(KitchenRef::new(KitchenImpl::default()), config).await;
    let k: KitchenRef = client.root();
    let mut hanging = Vec::new();
    for _ in 0..6 {
        let k = k.clone();
        hanging.push(tokio::spawn(async move { k.hang().await }));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(server.stats().tables.in_flight_calls, 2);
    // Every hanging call is given up: the two running are cancelled, the four held follow.
    for h in hanging {
        h.abort();
    }
    let minute = std::time::Duration::from_secs(60);
    let added = tokio::time::timeout(minute, k.add(1, 1)).await;
    assert!(
        matches!(added, Ok(Ok(2))),
        "{added:?} ({} running on the server)",
        server.stats().tables.in_flight_calls
    );
    assert!(!client.is_closed() && !server.is_closed());
}

/// One call runs long (five minutes) at the cap on running calls, and a second waits, held,
/// for it to end. The client keeps the default keep-alive (a ping after 20 s of quiet, a close
/// after 60 s); the server pings nobody (`keepalive_interval: None`). The client's pings must
/// still be answered while a call is held (the server's output is not congested), or the
/// client takes the quiet for a dead peer and closes a healthy connection. (Before calls were
/// held at the cap, the second was refused and pongs went out at once.)
#[tokio::test(start_paused = true)]
async fn pings_are_answered_while_a_call_waits_at_the_cap() {
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 1;
    config.limits.max_violations = 0;
    let server_config = pb::Config {
        keepalive_interval: None,
        idle_timeout: None,
        ..config.clone()
    };
    let (a, b) = pb::transport::memory_pair();
    let root = KitchenRef::new(KitchenImpl::default());
    let (server, client) = tokio::try_join!(
        pb::Connection::establish(a, &server_config, pb::Side::Server, Some(root.into()), None),
        pb::Connection::establish(b, &config, pb::Side::Client, None, None),
    )
    .unwrap();
    let k: KitchenRef = client.root();
    let long = tokio::spawn({
        let k = k.clone();
        async move { k.echo_after(1, 5 * 60 * 1000).await }
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(server.stats().tables.in_flight_calls, 1);
    let held = tokio::spawn({
        let k = k.clone();
        async move { k.echo_after(2, 0).await }
    });
    let ten_minutes = std::time::Duration::from_secs(600);
    let long = tokio::time::timeout(ten_minutes, long).await;
    let held = tokio::time::timeout(ten_minutes, held).await;
    assert!(
        matches!(long, Ok(Ok(Ok(1)))) && matches!(held, Ok(Ok(Ok(2)))),
        "long: {long:?}, held: {held:?}; client closed: {:?}, server closed: {:?}",
        client.close_reason(),
        server.close_reason()
    );
}

/// A guard whose drop panics (a `RefCell` borrowed twice, an `assert!` in a `Drop`): a user bug
/// in a handler's state, met only when the handler is dropped.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("a guard that panics when dropped");
        }
    }
}

#[pb::remote]
pub trait Brittle {
    /// Waits for ever holding a guard that panics when dropped.
    async fn wait(&self) -> Result<(), String>;
    /// Answers at once.
    async fn ping(&self) -> Result<u8, String>;
}

struct BrittleImpl;

impl Brittle for BrittleImpl {
    async fn wait(&self) -> Result<(), String> {
        let _guard = PanicsOnDrop;
        std::future::pending::<()>().await;
        Ok(())
    }
    async fn ping(&self) -> Result<u8, String> {
        Ok(1)
    }
}

/// A cancelled handler whose drop panics gives its running place back (and its bytes in the
/// call window) as any cancelled handler does: the panic is caught, and later calls run.
#[tokio::test(start_paused = true)]
async fn a_handler_that_panics_as_it_is_cancelled_does_not_keep_its_running_place() {
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 1;
    let (server, client) = memory_pair_with(BrittleRef::new(BrittleImpl), config).await;
    let b: BrittleRef = client.root();
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.wait().await }
    });
    assert!(settle(|| server.stats().tables.in_flight_calls == 1).await);
    // The caller gives up: the handler is dropped, and its guard panics.
    waiting.abort();
    let _ = waiting.await;
    assert!(
        settle(|| server.stats().tables.in_flight_calls == 0).await,
        "the cancelled call's running place is given back"
    );
    assert_eq!(server.stats().tables.call_bytes, 0);
    let minute = std::time::Duration::from_secs(60);
    assert_eq!(tokio::time::timeout(minute, b.ping()).await, Ok(Ok(1)));
    assert!(!server.is_closed() && !client.is_closed());
}

#[pb::remote]
pub trait Held {
    /// Answers at once.
    async fn ping(&self) -> Result<u8, String>;
}

/// A `Held` object that counts its own drop.
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Held for Counted {
    async fn ping(&self) -> Result<u8, String> {
        Ok(1)
    }
}

#[pb::remote]
pub trait Keeper {
    /// Holds `h` and never answers.
    async fn keep(&self, h: HeldRef) -> Result<(), String>;
    /// Never answers.
    async fn block(&self) -> Result<(), String>;
}

struct KeeperImpl;

impl Keeper for KeeperImpl {
    async fn keep(&self, h: HeldRef) -> Result<(), String> {
        let _h = h;
        std::future::pending::<()>().await;
        Ok(())
    }
    async fn block(&self) -> Result<(), String> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// A cancelled call that sends a reference releases it, whether its handler was running or
/// the call was held back at `max_in_flight_calls`: the callee imports nothing for good, the
/// caller's export ends and the object is freed.
#[tokio::test(start_paused = true)]
async fn a_cancelled_call_carrying_a_reference_releases_it_running_or_held() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 1;
    let (server, client) = memory_pair_with(KeeperRef::new(KeeperImpl), config).await;
    let k: KeeperRef = client.root();
    let dropped = Arc::new(AtomicUsize::new(0));
    let made = || HeldRef::new(Counted(dropped.clone()));
    // Running.
    let running = tokio::spawn({
        let (k, h) = (k.clone(), made());
        async move { k.keep(h).await }
    });
    assert!(settle(|| server.stats().tables.imported == 1).await);
    assert_eq!(client.stats().tables.exported, 1);
    running.abort();
    let _ = running.await;
    assert!(
        settle(|| dropped.load(Ordering::SeqCst) == 1).await,
        "the object sent by the cancelled running call is freed"
    );
    assert!(settle(|| server.stats().tables.imported == 0).await);
    assert_eq!(client.stats().tables.exported, 0);
    // Held: one call takes the only running place, the next is held with its reference.
    let blocking = tokio::spawn({
        let k = k.clone();
        async move { k.block().await }
    });
    assert!(settle(|| server.stats().tables.in_flight_calls == 1).await);
    let held = tokio::spawn({
        let (k, h) = (k.clone(), made());
        async move { k.keep(h).await }
    });
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    assert_eq!(client.stats().tables.exported, 1);
    held.abort();
    let _ = held.await;
    assert!(
        settle(|| dropped.load(Ordering::SeqCst) == 2).await,
        "the object sent by the cancelled held call is freed"
    );
    assert!(settle(|| client.stats().tables.exported == 0).await);
    assert_eq!(server.stats().tables.imported, 0);
    assert_eq!(server.stats().tables.in_flight_calls, 1);
    blocking.abort();
    assert!(settle(|| server.stats().tables.in_flight_calls == 0).await);
}
