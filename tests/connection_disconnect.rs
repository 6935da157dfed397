//! The peer disconnecting mid-call: every pending call fails with a disconnected error at once,
//! and every running handler (a one-way call's too) is cancelled.
//! A graceful close: running calls finish, and every call read meanwhile (or held back before)
//! is refused with a shutting-down error, never lost.

mod common;

use common::*;
use pb::CallError;
use tokio::task::{JoinHandle, JoinSet};

#[tokio::test]
async fn pending_calls_fail_at_once_when_the_peer_goes() {
    let (server, client) = memory_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = client.root();
    let mut set = JoinSet::new();
    for _ in 0..10 {
        let k = k.clone();
        set.spawn(async move { k.hang().await });
    }
    // Wait until all ten are running on the server.
    while server.stats().tables.in_flight_calls < 10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(client.stats().tables.pending_calls, 10);
    server.abort();
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), Err(CallError::Disconnected));
    }
    client.closed().await;
    assert_eq!(client.stats().tables.pending_calls, 0);
    // New calls on a dead reference fail at once too.
    assert_eq!(k.add(1, 2).await, Err(CallError::Disconnected));
    assert!(!k.is_connected());
    assert_eq!(
        server.stats().tables.in_flight_calls,
        0,
        "the server's handlers were cancelled"
    );
}

#[tokio::test]
async fn pending_calls_fail_when_the_tcp_peer_drops() {
    let (server, conn) = common::tcp_pair(KitchenRef::new(KitchenImpl::default())).await;
    let k: KitchenRef = conn.root();
    let pending = tokio::spawn({
        let k = k.clone();
        async move { k.hang().await }
    });
    while server
        .connections()
        .first()
        .map(|c| c.stats().tables.in_flight_calls)
        != Some(1)
    {
        tokio::task::yield_now().await;
    }
    server.connections()[0].abort();
    assert_eq!(pending.await.unwrap(), Err(CallError::Disconnected));
    // The disconnect notification fires on the reference.
    k.disconnected().await;
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_calls_in_flight_finish() {
    let kitchen = std::sync::Arc::new(KitchenImpl::default());
    let gate = kitchen.gate.clone();
    let server = pb::Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::from_arc(kitchen));
    let addr = server.local_addr();
    let conn = pb::Client::connect(addr).await.unwrap();
    let k: KitchenRef = conn.root();
    let running = tokio::spawn({
        let k = k.clone();
        async move { k.gated(7).await }
    });
    while server
        .connections()
        .first()
        .map(|c| c.stats().tables.in_flight_calls)
        != Some(1)
    {
        tokio::task::yield_now().await;
    }
    let server_conn = server.connections()[0].clone();
    let shutdown = tokio::spawn(server.shutdown());
    // While draining, a new call is refused with a clear error, not dropped.
    while !matches!(k.add(1, 1).await, Err(CallError::ShuttingDown)) {
        tokio::task::yield_now().await;
    }
    assert!(
        !server_conn.is_closed(),
        "the server waits for the running call"
    );
    gate.add_permits(1);
    // The call that was running finished and its answer arrived.
    assert_eq!(running.await.unwrap(), Ok(7));
    shutdown.await.unwrap();
    conn.closed().await;
    assert!(
        pb::Client::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

/// A connection allowed one running call, with the peer's `gated(7)` running on it and its
/// `add(1, 2)` held back, read but not run (it counts in the call window): the server's end,
/// the client's, the gate that lets the running call finish, and the two calls.
async fn one_call_running_and_one_held() -> (
    pb::Connection,
    pb::Connection,
    std::sync::Arc<tokio::sync::Semaphore>,
    JoinHandle<Result<u64, CallError<TestError>>>,
    JoinHandle<Result<i64, CallError<TestError>>>,
) {
    let kitchen = KitchenImpl::default();
    let gate = kitchen.gate.clone();
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 1;
    let (server, client) = memory_pair_with(KitchenRef::new(kitchen), config).await;
    let k: KitchenRef = client.root();
    let running = tokio::spawn({
        let k = k.clone();
        async move { k.gated(7).await }
    });
    assert!(settle(|| server.stats().tables.in_flight_calls == 1).await);
    let window_before = server.stats().tables.call_bytes;
    let held = tokio::spawn(async move { k.add(1, 2).await });
    assert!(settle(|| server.stats().tables.call_bytes > window_before).await);
    assert_eq!(server.stats().tables.in_flight_calls, 1);
    (server, client, gate, running, held)
}

/// A graceful close (what `ServerHandle::shutdown` does to every connection) with a call of
/// the peer's held back at `max_in_flight_calls`: the held call is refused with
/// `ShuttingDown`, never dropped, even when the running call ends right after the close began.
#[tokio::test(start_paused = true)]
async fn a_call_held_back_at_a_graceful_close_is_refused_not_lost() {
    let (server, _client, gate, running, held) = one_call_running_and_one_held().await;
    let closing = tokio::spawn({
        let server = server.clone();
        async move { server.close().await }
    });
    tokio::task::yield_now().await;
    gate.add_permits(1);
    assert_eq!(running.await.unwrap(), Ok(7));
    closing.await.unwrap();
    assert_eq!(held.await.unwrap(), Err(CallError::ShuttingDown));
}

/// The call held back at a graceful close is refused at once, while the running call goes on
/// (it does not wait for a call to end, nor for the reader's next timer).
#[tokio::test(start_paused = true)]
async fn a_call_held_back_at_a_graceful_close_is_refused_at_once() {
    let (server, _client, gate, running, held) = one_call_running_and_one_held().await;
    let started = tokio::time::Instant::now();
    let closing = tokio::spawn({
        let server = server.clone();
        async move { server.close().await }
    });
    assert_eq!(held.await.unwrap(), Err(CallError::ShuttingDown));
    // Virtual time: had the refusal waited for a timer, the clock would have jumped to it.
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    assert!(!server.is_closed(), "the close waits for the running call");
    gate.add_permits(1);
    assert_eq!(running.await.unwrap(), Ok(7));
    closing.await.unwrap();
    assert!(server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_graceful_close_with_nothing_running_ends_the_stream_without_a_goodbye() {
    let (server, mut peer) = raw_peer(pb::Config::default()).await;
    let started = tokio::time::Instant::now();
    server.close().await;
    assert_eq!(server.close_reason(), Some(pb::CloseReason::Local));
    // Nothing to drain: the peer sees the end of the stream at once, with no goodbye before it
    // (a goodbye is sent only while calls drain; docs/ARCHITECTURE.md, "Shutdown").
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut rest)
        .await
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // No drain timer ran (virtual time would have jumped to it).
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
}

/// A connection that closes otherwise than gracefully (the peer goes) while it holds a call
/// back holds nothing after: a later `Connection::close()` has nothing to wait for.
#[tokio::test(start_paused = true)]
async fn close_of_a_connection_closed_while_holding_a_call_returns_at_once() {
    let (server, client, _gate, running, held) = one_call_running_and_one_held().await;
    // The peer goes away: the server's connection closes (not gracefully).
    client.abort();
    server.closed().await;
    assert!(server.is_closed());
    let _ = running.await;
    let _ = held.await;
    let started = tokio::time::Instant::now();
    // Closing a connection that is closed already has nothing to wait for.
    tokio::time::timeout(std::time::Duration::from_secs(3600), server.close())
        .await
        .unwrap();
    assert_eq!(
        started.elapsed(),
        std::time::Duration::ZERO,
        "close() of a closed connection waited {:?}",
        started.elapsed()
    );
}

#[pb::remote]
pub trait Lingering {
    /// Never ends; counts its drops (its cancellation).
    async fn forever(&self) -> Result<(), String>;
}

#[derive(Default)]
struct LingeringImpl {
    started: std::sync::atomic::AtomicUsize,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts its drops: a handler holding one is seen to be dropped.
struct CountDrop(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Lingering for LingeringImpl {
    async fn forever(&self) -> Result<(), String> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _guard = CountDrop(self.dropped.clone());
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Running handlers are cancelled when their connection ends (docs/ARCHITECTURE.md,
/// "References and their lifetimes"), those of one-way calls (`ObjectRef::send`) too: the
/// handler's future is dropped, and its task with it.
#[tokio::test(start_paused = true)]
async fn a_one_way_call_s_handler_is_cancelled_when_its_connection_ends() {
    use std::sync::atomic::Ordering;
    let lingering = std::sync::Arc::new(LingeringImpl::default());
    let (server, client) = memory_pair(LingeringRef::from_arc(lingering.clone())).await;
    let l: LingeringRef = client.root();
    l.object_ref().send("forever", &()).expect("sent");
    assert!(
        settle(|| lingering.started.load(Ordering::SeqCst) == 1).await,
        "the one-way handler runs"
    );
    assert_eq!(server.stats().tables.in_flight_calls, 1);
    // The client goes away.
    client.abort();
    assert!(settle(|| server.is_closed()).await);
    assert!(
        settle(|| lingering.dropped.load(Ordering::SeqCst) == 1).await,
        "the one-way call's handler was dropped"
    );
    assert_eq!(server.stats().tables.in_flight_calls, 0);
}
