//! Load, bounded and on 127.0.0.1 only: 1 000 concurrent TCP connections, 100 calls each, all in
//! flight together, every answer matched to its call.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::task::JoinSet;

const CONNECTIONS: usize = 1000;
const CALLS: usize = 100;

/// The soft limit on open files, from /proc (Linux); `None` elsewhere.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_a_hundred_calls_each_every_answer_matched() {
    // Both ends of every connection live in this process: two descriptors each.
    let needed = 2 * CONNECTIONS + 64;
    if let Some(limit) = open_files_limit() {
        assert!(
            limit >= needed,
            "this test needs {needed} open files; `ulimit -n` is {limit}"
        );
    }
    let server = pb::Server::builder()
        .max_connections(CONNECTIONS + 10)
        .max_connections_per_address(CONNECTIONS + 10)
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .serve(KitchenRef::new(KitchenImpl::default()));
    let addr = server.local_addr();

    // Connect all first, so that all are open at once.
    let mut connecting = JoinSet::new();
    for _ in 0..CONNECTIONS {
        connecting.spawn(async move { pb::Client::connect(addr).await });
    }
    let mut conns = Vec::with_capacity(CONNECTIONS);
    while let Some(c) = connecting.join_next().await {
        conns.push(c.unwrap().expect("connect"));
    }
    assert_eq!(conns.len(), CONNECTIONS);
    let open = tokio::time::timeout(Duration::from_secs(60), async {
        while server.connections().len() < CONNECTIONS {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(open.is_ok(), "the server holds all {CONNECTIONS} at once");

    let matched = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut calls = JoinSet::new();
    for (c, conn) in conns.iter().enumerate() {
        let k: KitchenRef = conn.root();
        for i in 0..CALLS {
            let (k, matched, wrong, failed) =
                (k.clone(), matched.clone(), wrong.clone(), failed.clone());
            calls.spawn(async move {
                let (a, b) = ((c as i64) << 20, i as i64);
                match k.add(a, b).await {
                    Ok(sum) if sum == a + b => matched.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => wrong.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
    }
    let all = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(r) = calls.join_next().await {
            r.unwrap();
        }
    })
    .await;
    assert!(all.is_ok(), "all calls ended");
    let (matched, wrong, failed) = (
        matched.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!(
        "load: {CONNECTIONS} connections x {CALLS} calls: {matched} matched, {wrong} misrouted, {failed} failed"
    );
    assert_eq!((wrong, failed), (0, 0));
    assert_eq!(matched, CONNECTIONS * CALLS);

    for c in &conns {
        c.abort();
    }
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while !server.connections().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the server forgets every closed connection"
    );
    server.shutdown().await;
}
