//! Calls users can steer: cancellation reaches the callee, deadlines expire on silent peers and
//! are inherited by onward calls, and bind calls to local objects exactly as remote ones.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pb::{CallError, Caller};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[pb::remote]
pub trait Slow {
    /// Never answers; records being dropped (cancelled) before finishing.
    async fn forever(&self) -> Result<(), ()>;
    /// The milliseconds left before the caller's deadline, as the callee sees it.
    async fn time_left(&self, caller: Caller) -> Result<Option<u64>, ()>;
    /// Calls `next.forever()` and reports how that call ended.
    async fn relay(&self, next: SlowRef) -> Result<String, ()>;
    /// Calls `next.time_left()`.
    async fn relay_time_left(&self, next: SlowRef) -> Result<Option<u64>, ()>;
}

#[derive(Default)]
struct SlowImpl {
    started: AtomicUsize,
    cancelled: Arc<AtomicUsize>,
}

struct OnDrop(Arc<AtomicUsize>, bool);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Slow for SlowImpl {
    async fn forever(&self) -> Result<(), ()> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _guard = OnDrop(self.cancelled.clone(), false);
        std::future::pending::<()>().await;
        Ok(())
    }
    async fn time_left(&self, caller: Caller) -> Result<Option<u64>, ()> {
        Ok(caller.deadline().map(|d| {
            d.saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64
        }))
    }
    async fn relay(&self, next: SlowRef) -> Result<String, ()> {
        Ok(match next.forever().await {
            Err(CallError::DeadlineExceeded) => "deadline exceeded".into(),
            other => format!("{other:?}"),
        })
    }
    async fn relay_time_left(&self, next: SlowRef) -> Result<Option<u64>, ()> {
        next.time_left().await.map_err(|_| ())
    }
}

#[tokio::test]
async fn a_dropped_call_is_cancelled_on_the_callee_and_leaves_no_entry() {
    let slow = Arc::new(SlowImpl::default());
    let (server, client) = common::memory_pair(SlowRef::from_arc(slow.clone())).await;
    let s: SlowRef = client.root();
    let call = tokio::spawn({
        let s = s.clone();
        async move { s.forever().await }
    });
    assert!(common::settle(|| slow.started.load(Ordering::SeqCst) == 1).await);
    assert_eq!(server.stats().tables.in_flight_calls, 1);
    assert_eq!(client.stats().tables.pending_calls, 1);
    // The caller gives up: dropping its future sends a cancel.
    call.abort();
    let _ = call.await;
    assert_eq!(
        client.stats().tables.pending_calls,
        0,
        "no entry left on the caller"
    );
    assert!(
        common::settle(|| slow.cancelled.load(Ordering::SeqCst) == 1).await,
        "the handler was dropped"
    );
    assert!(
        common::settle(|| server.stats().tables.in_flight_calls == 0).await,
        "no entry left on the callee"
    );
    // The connection is fine.
    assert_eq!(s.time_left().await, Ok(None));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_expires_on_a_silent_peer() {
    // A peer that completes the handshake and then never says anything again.
    let (ours, mut theirs) = pb::transport::memory_pair();
    tokio::spawn(async move {
        let hello = common::read_hello_frame(&mut theirs).await;
        theirs.write_all(&hello).await.unwrap();
        let mut sink = vec![0u8; 4096];
        while theirs.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
    });
    let conn =
        pb::Connection::establish(ours, &pb::Config::default(), pb::Side::Client, None, None)
            .await
            .unwrap();
    let s: SlowRef = conn.root();
    let started = tokio::time::Instant::now();
    let r = pb::deadline::with_timeout(Duration::from_secs(5), s.forever()).await;
    assert_eq!(r, Err(CallError::DeadlineExceeded));
    assert_eq!(
        tokio::time::Instant::now() - started,
        Duration::from_secs(5)
    );
    assert_eq!(
        conn.stats().tables.pending_calls,
        0,
        "the expired call left no entry"
    );
    // Let the expired call's cancel frame go out before counting.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    // An already expired deadline fails at once, without sending anything.
    let sent = conn.stats().bytes_out;
    let r = pb::deadline::with_deadline(tokio::time::Instant::now(), s.forever()).await;
    assert_eq!(r, Err(CallError::DeadlineExceeded));
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        conn.stats().bytes_out,
        sent,
        "nothing was sent for an expired call"
    );
}

#[tokio::test(start_paused = true)]
async fn the_callee_sees_the_deadline_and_its_calls_inherit_it() {
    // client -> middle -> back: `middle` calls `back` while serving the client.
    let back = Arc::new(SlowImpl::default());
    let (_b_server, to_back) = common::memory_pair(SlowRef::from_arc(back.clone())).await;
    let (_m_server, to_middle) = common::memory_pair(SlowRef::new(SlowImpl::default())).await;
    let middle: SlowRef = to_middle.root();
    let back_ref: SlowRef = to_back.root();

    // No deadline: none seen.
    assert_eq!(middle.time_left().await, Ok(None));
    // A timeout past what the clock can reach is a deadline decades away (it used to panic
    // adding `Duration::MAX` to now), carried as such.
    let left = pb::deadline::with_timeout(Duration::MAX, middle.time_left()).await;
    assert!(
        matches!(left, Ok(Some(ms)) if ms > 365 * 86_400_000),
        "{left:?}"
    );
    // The callee sees the caller's deadline.
    let left = pb::deadline::with_timeout(Duration::from_secs(10), middle.time_left()).await;
    assert_eq!(left, Ok(Some(10_000)));
    // An onward call made by the callee carries the same deadline.
    let left = pb::deadline::with_timeout(
        Duration::from_secs(10),
        middle.relay_time_left(back_ref.clone()),
    )
    .await;
    assert_eq!(left, Ok(Some(10_000)));
    // And expires with it: `middle`'s call to `back` fails at the deadline; the client's call
    // fails too, at the same instant.
    let r = pb::deadline::with_timeout(Duration::from_secs(3), middle.relay(back_ref)).await;
    assert!(
        matches!(r, Ok(ref s) if s == "deadline exceeded") || r == Err(CallError::DeadlineExceeded),
        "{r:?}"
    );
    assert!(
        common::settle(|| back.cancelled.load(Ordering::SeqCst) == 1).await,
        "the innermost handler was cancelled"
    );
}

/// A call held back at `max_in_flight_calls` runs under its caller's deadline, which went on
/// passing while it was held: its clock starts when the call is read, not when it runs.
#[tokio::test(start_paused = true)]
async fn a_call_held_at_the_cap_runs_under_its_caller_s_deadline_not_a_fresh_one() {
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 1;
    let slow = Arc::new(SlowImpl::default());
    let (server, client) = common::memory_pair_with(SlowRef::from_arc(slow.clone()), config).await;
    let s: SlowRef = client.root();
    // One call takes the only running place.
    let running = tokio::spawn({
        let s = s.clone();
        async move { s.forever().await }
    });
    assert!(common::settle(|| slow.started.load(Ordering::SeqCst) == 1).await);
    assert_eq!(server.stats().tables.in_flight_calls, 1);
    // A call with a 10 s deadline arrives and is held back for 6 s.
    let window = server.stats().tables.call_bytes;
    let held = tokio::spawn({
        let s = s.clone();
        async move { pb::deadline::with_timeout(Duration::from_secs(10), s.time_left()).await }
    });
    assert!(common::settle(|| server.stats().tables.call_bytes > window).await);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The running call is given up: the held one runs, 6 s into its 10 s.
    running.abort();
    let _ = running.await;
    let left = within(Duration::from_secs(60), held).await;
    assert!(
        matches!(left, Some(Ok(Ok(Some(ms)))) if ms <= 4_000),
        "the held call's handler sees {left:?} ms left of its caller's 10 s, 6 s of which \
         passed while it was held"
    );
}

/// `fut`'s output if it completes within `limit`: a call the deadline did not end waits
/// forever, and this turns that into a failed assertion instead of a hung test.
async fn within<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, fut).await.ok()
}

#[tokio::test(start_paused = true)]
async fn a_deadline_ends_a_call_to_a_local_object_as_it_ends_a_remote_one() {
    // The same object called in this process and across a connection: a call behaves the same
    // whichever side its object lives on.
    let slow = Arc::new(SlowImpl::default());
    let (_server, client) = common::memory_pair(SlowRef::from_arc(slow.clone())).await;
    let remote: SlowRef = client.root();
    let local = SlowRef::from_arc(slow.clone());
    assert!(local.object_ref().is_local() && !remote.object_ref().is_local());
    for (n, (side, s)) in [("remote", remote), ("local", local)]
        .into_iter()
        .enumerate()
    {
        let started = tokio::time::Instant::now();
        let r = within(
            Duration::from_secs(60),
            pb::deadline::with_timeout(Duration::from_secs(5), s.forever()),
        )
        .await;
        assert_eq!(r, Some(Err(CallError::DeadlineExceeded)), "{side}");
        assert_eq!(
            tokio::time::Instant::now() - started,
            Duration::from_secs(5),
            "{side}: the call ended at its deadline"
        );
        assert!(
            common::settle(|| slow.cancelled.load(Ordering::SeqCst) == n + 1).await,
            "{side}: the handler was dropped at the deadline"
        );
        // An already expired deadline fails at once, without running the handler.
        let before = slow.started.load(Ordering::SeqCst);
        let r = within(
            Duration::from_secs(60),
            pb::deadline::with_deadline(tokio::time::Instant::now(), s.forever()),
        )
        .await;
        assert_eq!(r, Some(Err(CallError::DeadlineExceeded)), "{side}");
        assert_eq!(slow.started.load(Ordering::SeqCst), before, "{side}");
        // The handler sees the deadline, and a call without one sees none.
        assert_eq!(s.time_left().await, Ok(None), "{side}");
        let left = pb::deadline::with_timeout(Duration::from_secs(10), s.time_left()).await;
        assert_eq!(left, Ok(Some(10_000)), "{side}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_local_handler_s_onward_calls_inherit_the_deadline_and_expire_with_it() {
    // A local object relays to a remote one and to a local one: its onward calls carry the
    // deadline and fail with it, and the innermost handler is dropped.
    let back = Arc::new(SlowImpl::default());
    let (_server, to_back) = common::memory_pair(SlowRef::from_arc(back.clone())).await;
    let middle = SlowRef::new(SlowImpl::default());
    let targets = [
        ("remote", to_back.root::<SlowRef>()),
        ("local", SlowRef::from_arc(back.clone())),
    ];
    for (n, (side, next)) in targets.into_iter().enumerate() {
        let left = pb::deadline::with_timeout(
            Duration::from_secs(10),
            middle.relay_time_left(next.clone()),
        )
        .await;
        assert_eq!(left, Ok(Some(10_000)), "{side}");
        let r = within(
            Duration::from_secs(60),
            pb::deadline::with_timeout(Duration::from_secs(3), middle.relay(next)),
        )
        .await;
        assert!(
            matches!(r, Some(Ok(ref s)) if s == "deadline exceeded")
                || r == Some(Err(CallError::DeadlineExceeded)),
            "{side}: {r:?}"
        );
        assert!(
            common::settle(|| back.cancelled.load(Ordering::SeqCst) == n + 1).await,
            "{side}: the innermost handler was cancelled"
        );
    }
}

#[pb::remote]
pub trait Sink {
    /// Holds `data` and never answers.
    async fn hold(&self, data: Vec<u8>) -> Result<(), ()>;
    /// Reads the stream to its end; returns how many items.
    async fn take(&self, data: pb::stream::Stream<u32>) -> Result<u32, ()>;
    /// The milliseconds left before the caller's deadline, as the callee sees it.
    async fn time_left(&self, caller: Caller) -> Result<Option<u64>, ()>;
}

struct SinkImpl;

impl Sink for SinkImpl {
    async fn hold(&self, _data: Vec<u8>) -> Result<(), ()> {
        std::future::pending().await
    }
    async fn take(&self, data: pb::stream::Stream<u32>) -> Result<u32, ()> {
        data.collect().await.map(|v| v.len() as u32).map_err(|_| ())
    }
    async fn time_left(&self, caller: Caller) -> Result<Option<u64>, ()> {
        Ok(caller.deadline().map(|d| {
            d.saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64
        }))
    }
}

/// A connection whose peer's call window (256 KiB, 64 KiB frames) is full: four calls of
/// 60 KiB that are never answered, and a fifth parked behind them (their tasks, to give up).
async fn full_window() -> (
    pb::Connection,
    pb::Connection,
    SinkRef,
    Vec<tokio::task::JoinHandle<Result<(), pb::CallError<()>>>>,
) {
    let config = pb::Config {
        limits: pb::Limits {
            max_frame_len: 64 * 1024,
            max_call_bytes: 256 * 1024,
            ..pb::Limits::default()
        },
        ..pb::Config::default()
    };
    let (server, client) = common::memory_pair_with(SinkRef::new(SinkImpl), config).await;
    let sink: SinkRef = client.root();
    let mut holds = Vec::new();
    for _ in 0..5 {
        let sink = sink.clone();
        holds.push(tokio::spawn(
            async move { sink.hold(vec![7; 60 * 1024]).await },
        ));
    }
    assert!(common::settle(|| client.stats().tables.parked_calls == 1).await);
    (server, client, sink, holds)
}

/// A call that waits parked (the peer's call window is full) carries a stream; its caller gives
/// up before it leaves. Nothing was sent, so nothing of it may stay: the stream's source is not
/// left exported to a peer that never heard of it, and its producer learns that the stream is
/// gone.
#[tokio::test(start_paused = true)]
async fn a_parked_call_dropped_before_it_leaves_exports_nothing() {
    let (_server, client, sink, holds) = full_window().await;
    // The sixth waits for room behind it, parked, with a stream in its arguments.
    let (tx, rx) = pb::stream::channel::<u32>(2);
    let parked = tokio::spawn({
        let sink = sink.clone();
        async move { sink.take(rx).await }
    });
    assert!(common::settle(|| client.stats().tables.parked_calls == 2).await);
    parked.abort();
    let _ = parked.await;
    assert_eq!(client.stats().tables.parked_calls, 1);
    // (exports, whether the producer saw its stream go within 10 s)
    let exported = client.stats().tables.exported;
    let closed = within(Duration::from_secs(10), tx.closed()).await.is_some();
    assert_eq!(
        (exported, closed),
        (0, true),
        "the stream of a call never sent stays exported, and its producer waits on"
    );
    for h in holds {
        h.abort();
    }
}
/// A call with a deadline that waits parked (the peer's call window is full) keeps its deadline
/// there; once it leaves, the callee must see the time the caller has left, not the time it had
/// when it was made: the callee may not run on (or hand on to its own calls) a deadline later
/// than its caller's.
#[tokio::test(start_paused = true)]
async fn a_call_that_waited_parked_carries_the_time_left_when_it_leaves() {
    let (_server, client, sink, holds) = full_window().await;
    // A call with 10 s to go waits behind them.
    let timed = tokio::spawn({
        let sink = sink.clone();
        async move { pb::deadline::with_timeout(Duration::from_secs(10), sink.time_left()).await }
    });
    assert!(common::settle(|| client.stats().tables.parked_calls == 2).await);
    // 6 s later the window frees up (the holds are given up), and the call leaves.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for h in holds {
        h.abort();
    }
    let left = timed.await.unwrap();
    assert!(
        matches!(left, Ok(Some(ms)) if (3_900..=4_000).contains(&ms)),
        "the caller had 4 s left when the call left; the callee saw {left:?} ms"
    );
}
