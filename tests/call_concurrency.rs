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

#[tokio::test]
async fn in_flight_limit_refuses_cleanly() {
    let mut config = pb::Config::default();
    config.limits.max_in_flight_calls = 4;
    config.limits.max_violations = 1000;
    let (_server, client) = memory_pair_with(KitchenRef::new(KitchenImpl::default()), config).await;
    let k: KitchenRef = client.root();
    let mut hanging = Vec::new();
    for _ in 0..4 {
        let k = k.clone();
        hanging.push(tokio::spawn(async move { k.hang().await }));
    }
    // Let the four reach the server.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    match k.add(1, 1).await {
        Err(pb::CallError::LimitExceeded(m)) => {
            assert!(m.contains("max_in_flight_calls = 4"), "{m}")
        }
        other => panic!("expected the limit, got {other:?}"),
    }
    for h in hanging {
        h.abort();
    }
}
