//! Heap allocations per call, counted: a call that allocates more than it has to is slower on
//! every path (the allocator is a large share of a small call's instructions), so the counts
//! are pinned here, where a change that adds one fails, rather than left to benchmarks.
//!
//! Everything runs on one current-thread runtime (this test's thread): a `pb::Server` on
//! 127.0.0.1 and a client, as `cargo bench --bench rpc` runs them, so the count is both sides'
//! allocations for each call, made by this thread alone (the
//! file has one test, so nothing else runs beside it).

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

/// A sequential `add(i64, i64) -> i64` call over TCP, client and server together: the
/// caller's future, the call's envelope and its answer's, the server's dispatch. What is left
/// per call: the server's handler future (one box, as every `Dispatch` returns one).
#[tokio::test(flavor = "current_thread")]
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
    let per_call = count as f64 / CALLS as f64;
    eprintln!("{count} allocations in {CALLS} calls ({per_call:.2} a call)");
    assert!(
        per_call <= 1.05,
        "{per_call:.2} allocations a call ({count} in {CALLS}), at most 1 expected"
    );
    conn.close().await;
    server.shutdown().await;
}
