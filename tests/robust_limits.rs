//! Every limit, hit: a clear error that names the limit and its setting, and the connection
//! keeps serving (or, for a peer that keeps hitting limits, is closed).

mod common;

use common::raw_peer;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use pb::{CallError, CloseReason, Config, Connection, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Leaf,
    Node(Box<Value>),
}

impl Value {
    fn nested(levels: u32) -> Value {
        (0..levels).fold(Value::Leaf, |v, _| Value::Node(Box::new(v)))
    }
}

#[pb::remote]
pub trait Tree {
    /// How many `Node`s deep `v` is.
    async fn depth(&self, v: Value) -> Result<u32, String>;
    /// A value `levels` deep.
    async fn make(&self, levels: u32) -> Result<Value, String>;
}

struct TreeImpl;

impl Tree for TreeImpl {
    async fn depth(&self, v: Value) -> Result<u32, String> {
        let mut n = 0;
        let mut at = &v;
        while let Value::Node(inner) = at {
            n += 1;
            at = inner;
        }
        Ok(n)
    }
    async fn make(&self, levels: u32) -> Result<Value, String> {
        Ok(Value::nested(levels))
    }
}

async fn tree_pair(server: Config, client: Config) -> (Connection, Connection) {
    let (a, b) = pb::transport::memory_pair();
    let s = Connection::establish(
        a,
        &server,
        Side::Server,
        Some(TreeRef::new(TreeImpl).object_ref().clone()),
        None,
    );
    let c = Connection::establish(b, &client, Side::Client, None, None);
    tokio::try_join!(s, c).unwrap()
}

/// A ~30 KB message nesting 30 000 levels: the stack overflow that aborts a process without a
/// depth limit. Sent as raw payload bytes, since encoding such a value would overflow the
/// sender's own stack.
#[tokio::test(start_paused = true)]
async fn a_deeply_nested_argument_is_a_clean_error_and_the_connection_survives() {
    let (_server, client) = tree_pair(Config::default(), Config::default()).await;
    let mut payload = vec![1u8; 30_000]; // `Node` tags (variant 1)
    payload.push(0); // `Leaf`
    let r = client
        .root_ref()
        .call_raw("depth", Bytes::from(payload), Vec::new())
        .await;
    let fault = r.expect_err("refused");
    assert_eq!(fault.kind, pb::proto::message::FaultKind::BadArguments);
    assert!(
        fault.message.contains("max_depth = 128"),
        "{}",
        fault.message
    );
    let tree: TreeRef = client.root();
    assert_eq!(tree.depth(Value::nested(100)).await, Ok(100));
    assert!(!client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn max_depth_is_configurable_for_arguments_and_answers() {
    let mut shallow = Config::default();
    shallow.limits.max_depth = 8;
    // The server decodes arguments under its limit: 1 level for the arguments tuple, then the
    // value's enum levels (a Leaf under n Nodes is n + 1).
    let (_s, client) = tree_pair(shallow.clone(), Config::default()).await;
    let tree: TreeRef = client.root();
    assert_eq!(tree.depth(Value::nested(6)).await, Ok(6));
    match tree.depth(Value::nested(7)).await {
        Err(CallError::BadArguments(m)) => assert!(m.contains("max_depth = 8"), "{m}"),
        other => panic!("expected a depth error, got {other:?}"),
    }
    // The client decodes answers under its own limit.
    let (_s, client) = tree_pair(Config::default(), shallow).await;
    let tree: TreeRef = client.root();
    assert!(tree.make(7).await.is_ok());
    match tree.make(8).await {
        Err(CallError::BadAnswer(m)) => assert!(m.contains("max_depth = 8"), "{m}"),
        other => panic!("expected a depth error, got {other:?}"),
    }
    assert_eq!(tree.make(3).await, Ok(Value::nested(3)));
}

#[tokio::test(start_paused = true)]
async fn max_pending_calls_refuses_the_call_over_the_limit() {
    let kitchen = KitchenImpl::default();
    let gate = kitchen.gate.clone();
    let mut config = Config::default();
    config.limits.max_pending_calls = 2;
    let (_server, client) = memory_pair_with(KitchenRef::new(kitchen), config).await;
    let k: KitchenRef = client.root();
    let first = tokio::spawn({
        let k = k.clone();
        async move { k.gated(1).await }
    });
    let second = tokio::spawn({
        let k = k.clone();
        async move { k.gated(2).await }
    });
    assert!(settle(|| client.stats().tables.pending_calls == 2).await);
    match k.gated(3).await {
        Err(CallError::LimitExceeded(m)) => assert!(m.contains("max_pending_calls = 2"), "{m}"),
        other => panic!("expected a limit error, got {other:?}"),
    }
    gate.add_permits(2);
    assert_eq!(first.await.unwrap(), Ok(1));
    assert_eq!(second.await.unwrap(), Ok(2));
    assert_eq!(k.add(1, 1).await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn a_message_over_max_frame_len_is_refused_before_it_is_sent() {
    let mut config = Config::default();
    config.limits.max_frame_len = 1024;
    let (_server, client) = memory_pair_with(KitchenRef::new(KitchenImpl::default()), config).await;
    let k: KitchenRef = client.root();
    match k.reverse(vec![7; 2000]).await {
        Err(CallError::LimitExceeded(m)) => assert!(m.contains("max_frame_len = 1024"), "{m}"),
        other => panic!("expected a limit error, got {other:?}"),
    }
    assert_eq!(k.reverse(vec![1, 2, 3]).await, Ok(vec![3, 2, 1]));
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

async fn closed_with(conn: &Connection) -> String {
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed");
    match conn.close_reason() {
        Some(CloseReason::Protocol(why)) => why,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_keeps_violating_limits_is_disconnected() {
    let mut config = Config::default();
    config.limits.max_violations = 3;
    let (server, mut peer) = raw_peer(config).await;
    // Releases of objects never exported: each one a violation.
    for id in 1..=3u8 {
        peer.write_all(&frame(&[4, 1, id, 1])).await.unwrap();
        // Still open after each tolerated violation: a call gets its answer.
        peer.write_all(&frame(&[1, 1, id, 0, 3, b'a', b'd', b'd', 0, 2, 2]))
            .await
            .unwrap();
        let mut answer = [0u8; 9];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            answer,
            [0, 0, 0, 5, 2, id, 0, 0, 4],
            "add(1, 1) = 2 (zigzag)"
        );
    }
    peer.write_all(&frame(&[4, 1, 9, 1])).await.unwrap();
    let why = closed_with(&server).await;
    assert!(why.contains("max_violations = 3"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn too_many_references_in_one_message_closes_with_the_limit_named() {
    let mut config = Config::default();
    config.limits.message.max_refs_per_message = 4;
    let (server, mut peer) = raw_peer(config).await;
    let mut call = vec![1, 1, 1, 0, 3, b'a', b'd', b'd', 5];
    for i in 1..=5 {
        call.extend_from_slice(&[0, i]);
    }
    peer.write_all(&frame(&call)).await.unwrap();
    let why = closed_with(&server).await;
    assert!(why.contains("max_refs_per_message = 4"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn too_many_release_entries_closes_with_the_limit_named() {
    let mut config = Config::default();
    config.limits.message.max_release_entries = 2;
    let (server, mut peer) = raw_peer(config).await;
    peer.write_all(&frame(&[4, 3, 1, 1, 2, 1, 3, 1]))
        .await
        .unwrap();
    let why = closed_with(&server).await;
    assert!(why.contains("max_release_entries = 2"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn a_frame_over_max_frame_len_closes_with_the_limit_named() {
    let mut config = Config::default();
    config.limits.max_frame_len = 100;
    let (server, mut peer) = raw_peer(config).await;
    peer.write_all(&101u32.to_be_bytes()).await.unwrap();
    let why = closed_with(&server).await;
    assert!(why.contains("max_frame_len = 100"), "{why}");
}
