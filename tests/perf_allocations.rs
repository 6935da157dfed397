//! Heap allocations per call, counted: a call that allocates more than it has to is slower on
//! every path (the allocator is a large share of a small call's instructions), so the counts
//! are pinned here, where a change that adds one fails, rather than left to benchmarks.
//!
//! Everything runs on one current-thread runtime (this test's thread): a `pb::Server` on
//! 127.0.0.1 and a client, as `cargo bench --bench rpc` runs them, so the count is both sides'
//! allocations for each call, made by this thread alone. The
//! counter is the process's, so the file has one test, which measures one case after the other.

mod common;

use common::{KitchenImpl, KitchenRef};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// The system allocator, counting (`stats_alloc`).
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The allocations (and reallocations) made while `f` runs.
async fn allocations<F: std::future::Future>(f: F) -> (usize, F::Output) {
    let region = Region::new(GLOBAL);
    let out = f.await;
    let change = region.change();
    (change.allocations + change.reallocations, out)
}

const CALLS: u64 = 2_000;

/// Fails unless `count` allocations over `calls` calls are about one per call (a few in all
/// are the runtime's own, made now and then).
fn at_most_one_per_call(count: usize, calls: u64, what: &str) {
    let per_call = count as f64 / calls as f64;
    eprintln!("{count} allocations in {calls} {what} ({per_call:.2} a call)");
    assert!(
        per_call <= 1.05,
        "{per_call:.2} allocations a call in {what} ({count} in {calls}), at most 1 expected"
    );
}

/// A sequential `add(i64, i64) -> i64` call over TCP, client and server together: the
/// caller's future, the call's envelope and its answer's, the server's dispatch. What is left
/// per call: the server's handler future (one box, as every `Dispatch` returns one).
async fn a_sequential_call_allocates_once_on_both_sides_together() {
    let (server, conn) = common::tcp_pair(KitchenRef::new(KitchenImpl::default())).await;
    let kitchen: KitchenRef = conn.root();
    // Warm-up: tables, buffers and the runtime's queues reach their working sizes.
    for i in 0..CALLS {
        assert_eq!(kitchen.add(i as i64, 1).await.unwrap(), i as i64 + 1);
    }
    let (count, ()) = allocations(async {
        for i in 0..CALLS {
            assert_eq!(kitchen.add(i as i64, 2).await.unwrap(), i as i64 + 2);
        }
    })
    .await;
    at_most_one_per_call(count, CALLS, "sequential calls");
    conn.close().await;
    server.shutdown().await;
}

/// 64 calls in flight (64 tasks on one connection, each calling in turn), client and server
/// together, as `cargo bench --bench rpc`'s `pipelined`: calls that arrive or are answered
/// together share their buffers, so a call in flight allocates no more than a lone one.
async fn calls_in_flight_allocate_once_each_on_both_sides_together() {
    const TASKS: u64 = 64;
    let (server, conn) = common::tcp_pair(KitchenRef::new(KitchenImpl::default())).await;
    let kitchen: KitchenRef = conn.root();
    let run = |round: i64| {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let kitchen = kitchen.clone();
            tasks.spawn(async move {
                for i in 0..CALLS / TASKS * 4 {
                    let a = (t * 1_000_000 + i) as i64;
                    assert_eq!(kitchen.add(a, round).await.unwrap(), a + round);
                }
            });
        }
        async move {
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        }
    };
    // Warm-up, then the count (the 64 tasks' own allocations are made before it starts).
    run(1).await;
    let tasks = run(2);
    let calls = TASKS * (CALLS / TASKS * 4);
    let (count, ()) = allocations(tasks).await;
    at_most_one_per_call(count, calls, "calls in flight");
    conn.close().await;
    server.shutdown().await;
}

#[derive(pb::AmpCommand)]
#[amp(response = Total)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(pb::AmpFields, Debug, PartialEq)]
struct Total {
    total: i64,
}

/// A sequential AMP call over TCP (`Sum(a, b) -> total`), both sides together: the boxes'
/// pairs come from per-thread spares and their small keys and values from shared chunks, so
/// what is left is the responder's future.
async fn a_sequential_amp_call_allocates() {
    use pb::amp::{AmpConfig, AmpConnection, Locator};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, dialed) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
    let locator = Locator::new().respond(|Sum { a, b }| async move { Ok(Total { total: a + b }) });
    let _server = AmpConnection::spawn(accepted.unwrap().0, AmpConfig::default(), locator);
    let client = AmpConnection::spawn(dialed.unwrap(), AmpConfig::default(), Locator::new());
    for i in 0..CALLS as i64 {
        assert_eq!(client.call(&Sum { a: i, b: 1 }).await.unwrap().total, i + 1);
    }
    let (count, ()) = allocations(async {
        for i in 0..CALLS as i64 {
            assert_eq!(client.call(&Sum { a: i, b: 2 }).await.unwrap().total, i + 2);
        }
    })
    .await;
    at_most_one_per_call(count, CALLS, "sequential AMP calls");
}

/// One test, so that nothing else allocates while a case is counted.
#[tokio::test(flavor = "current_thread")]
async fn calls_allocate_once_each_on_both_sides_together() {
    a_sequential_call_allocates_once_on_both_sides_together().await;
    calls_in_flight_allocate_once_each_on_both_sides_together().await;
    a_sequential_amp_call_allocates().await;
}
