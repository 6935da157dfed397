//! Wake-ups on the write path with transports that buffer (TLS does: a write may be taken
//! whole while the flush has to wait for the socket).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::KitchenRef;
use pb::proto::handshake::{Features, HELLO_LEN, Hello};
use pb::{Config, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

fn config() -> Config {
    Config {
        keepalive_interval: None,
        idle_timeout: None,
        write_stall_timeout: None,
        ..Config::default()
    }
}

/// The writer task waits for a flush of a buffering transport; a caller then writes its call
/// itself (it is the only one pending) and polls the transport with a no-op waker, which
/// replaces the writer's waker. Once the peer reads, nobody must be left asleep: the call
/// has to reach the peer.
#[tokio::test(start_paused = true)]
async fn a_call_written_by_its_caller_while_the_writer_waits_for_a_flush_still_leaves() {
    let (ours, mut raw) = tokio::io::duplex(256);
    let transport = BufWriter::with_capacity(64 * 1024, ours);
    let conn = Connection::dial(transport, &config(), None, None)
        .await
        .unwrap();
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&(HELLO_LEN as u32).to_be_bytes());
    Hello::ours(Features::NONE).encode(&mut hello);
    raw.write_all(&hello).await.unwrap();

    let kitchen: KitchenRef = conn.root();
    // Call 1 fills the pipe; its caller gives up (the writer task is left flushing).
    let first =
        tokio::time::timeout(Duration::from_millis(10), kitchen.reverse(vec![1u8; 2000])).await;
    assert!(first.is_err());
    tokio::task::yield_now().await;
    // Call 2: the only one pending, so its caller writes it.
    let k2 = kitchen.clone();
    let second = tokio::spawn(async move { k2.reverse(vec![2u8; 40]).await });
    tokio::time::sleep(Duration::from_millis(10)).await;

    // The peer now reads everything: call 2 must arrive.
    let mut got = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = raw.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
            if got.windows(40).any(|w| w.iter().all(|&b| b == 2)) {
                return;
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "call 2 never reached the peer: {} bytes arrived",
        got.len()
    );
    second.abort();
    drop(conn);
}

/// Calls made by many tasks of a multi-thread runtime leave in batches: the writer task, which
/// such a runtime runs right after the caller that woke it, lets the other callers queue
/// theirs first, rather than writing one call per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_many_tasks_on_a_multi_thread_runtime_leave_in_batches() {
    let (a, b) = pb::transport::memory_pair();
    let (b, writes) = common::Recording::new(b);
    let root = KitchenRef::new(common::KitchenImpl::default());
    let config = config();
    let server = Connection::establish(a, &config, pb::Side::Server, Some(root.into()), None);
    let client = Connection::establish(b, &config, pb::Side::Client, None, None);
    let (_server, client) = tokio::try_join!(server, client).unwrap();
    let kitchen: KitchenRef = client.root();
    kitchen.add(1, 2).await.unwrap();

    const TASKS: usize = 64;
    const CALLS: usize = 100;
    let before = writes.writes();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let kitchen = kitchen.clone();
        tasks.spawn(async move {
            for i in 0..CALLS as i64 {
                assert_eq!(kitchen.add(t as i64, i).await.unwrap(), t as i64 + i);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let written = writes.writes() - before;
    // One write per call before the writer yielded; many calls per write since.
    assert!(
        written * 4 <= TASKS * CALLS,
        "{written} writes for {} calls",
        TASKS * CALLS
    );
}
