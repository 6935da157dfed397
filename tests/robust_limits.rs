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
    config.limits.max_frame_len = 64 * 1024;
    let (_server, client) = memory_pair_with(KitchenRef::new(KitchenImpl::default()), config).await;
    let k: KitchenRef = client.root();
    match k.reverse(vec![7; 70_000]).await {
        Err(CallError::LimitExceeded(m)) => assert!(m.contains("max_frame_len = 65536"), "{m}"),
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
    config.limits.message.max_refs_per_message = 16;
    let (server, mut peer) = raw_peer(config).await;
    let mut call = vec![1, 1, 1, 0, 3, b'a', b'd', b'd', 17];
    for i in 1..=17 {
        call.extend_from_slice(&[0, i]);
    }
    peer.write_all(&frame(&call)).await.unwrap();
    let why = closed_with(&server).await;
    assert!(why.contains("max_refs_per_message = 16"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn too_many_release_entries_closes_with_the_limit_named() {
    let mut config = Config::default();
    config.limits.message.max_release_entries = 16;
    let (server, mut peer) = raw_peer(config).await;
    let mut release = vec![4, 17];
    for i in 1..=17 {
        release.extend_from_slice(&[i, 1]);
    }
    peer.write_all(&frame(&release)).await.unwrap();
    let why = closed_with(&server).await;
    assert!(why.contains("max_release_entries = 16"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn a_frame_over_max_frame_len_closes_with_the_limit_named() {
    let mut config = Config::default();
    config.limits.max_frame_len = 64 * 1024;
    let (server, mut peer) = raw_peer(config).await;
    peer.write_all(&(64 * 1024 + 1u32).to_be_bytes())
        .await
        .unwrap();
    let why = closed_with(&server).await;
    assert!(why.contains("max_frame_len = 65536"), "{why}");
}

// ---- a sender refuses what its peer will refuse ----------------------------------------------

#[pb::remote]
pub trait Item {
    async fn id(&self) -> Result<u32, String>;
}

struct ItemImpl(u32);

impl Item for ItemImpl {
    async fn id(&self) -> Result<u32, String> {
        Ok(self.0)
    }
}

#[pb::remote]
pub trait Bag {
    /// How many references arrived.
    async fn count(&self, items: Vec<ItemRef>) -> Result<usize, String>;
    /// `n` new objects.
    async fn make(&self, n: u32) -> Result<Vec<ItemRef>, String>;
    /// `n` bytes.
    async fn blob(&self, n: u32) -> Result<Bytes, String>;
    /// The length of `b`.
    async fn len(&self, b: Bytes) -> Result<usize, String>;
}

struct BagImpl;

impl Bag for BagImpl {
    async fn count(&self, items: Vec<ItemRef>) -> Result<usize, String> {
        Ok(items.len())
    }
    async fn make(&self, n: u32) -> Result<Vec<ItemRef>, String> {
        Ok((0..n).map(|i| ItemRef::new(ItemImpl(i))).collect())
    }
    async fn blob(&self, n: u32) -> Result<Bytes, String> {
        Ok(Bytes::from(vec![7u8; n as usize]))
    }
    async fn len(&self, b: Bytes) -> Result<usize, String> {
        Ok(b.len())
    }
}

fn items(n: u32) -> Vec<ItemRef> {
    (0..n).map(|i| ItemRef::new(ItemImpl(i))).collect()
}

async fn bag_pair(server: Config, client: Config) -> (Connection, Connection) {
    let (a, b) = pb::transport::memory_pair();
    let s = Connection::establish(
        a,
        &server,
        Side::Server,
        Some(BagRef::new(BagImpl).object_ref().clone()),
        None,
    );
    let c = Connection::establish(b, &client, Side::Client, None, None);
    tokio::try_join!(s, c).unwrap()
}

/// The limit error of a call, or a panic naming what came instead.
fn limit_message<T: std::fmt::Debug>(r: Result<T, CallError<String>>) -> String {
    match r {
        Err(CallError::LimitExceeded(m)) => m,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

/// The connection still serves: a call with references and a plain one succeed.
async fn still_works(client: &Connection) {
    let bag: BagRef = client.root();
    assert_eq!(bag.count(items(3)).await, Ok(3));
    let made = bag.make(2).await.unwrap();
    assert_eq!(made[1].id().await, Ok(1));
    assert_eq!(bag.len(Bytes::from_static(b"abc")).await, Ok(3));
    assert!(!client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_argument_with_more_references_than_the_peer_accepts_fails_alone() {
    let (server, client) = bag_pair(Config::default(), Config::default()).await;
    let bag: BagRef = client.root();
    let m = limit_message(bag.count(items(2000)).await);
    assert!(m.contains("max_refs_per_message = 1024"), "{m}");
    // Nothing was exported for the refused call.
    assert_eq!(client.stats().tables.exported, 0);
    still_works(&client).await;
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_argument_is_held_to_the_peers_smaller_max_refs_per_message() {
    let mut small = Config::default();
    small.limits.message.max_refs_per_message = 100;
    let (server, client) = bag_pair(small, Config::default()).await;
    let bag: BagRef = client.root();
    assert_eq!(bag.count(items(100)).await, Ok(100));
    let m = limit_message(bag.count(items(101)).await);
    assert!(m.contains("max_refs_per_message = 100"), "{m}");
    still_works(&client).await;
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_answer_with_more_references_than_the_caller_accepts_fails_alone() {
    let (server, client) = bag_pair(Config::default(), Config::default()).await;
    let bag: BagRef = client.root();
    let m = limit_message(bag.make(2000).await);
    assert!(m.contains("max_refs_per_message = 1024"), "{m}");
    // The refused answer exported nothing.
    assert_eq!(server.stats().tables.exported, 0);
    still_works(&client).await;
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_held_to_the_callers_smaller_max_refs_per_message() {
    let mut small = Config::default();
    small.limits.message.max_refs_per_message = 100;
    let (server, client) = bag_pair(Config::default(), small).await;
    let bag: BagRef = client.root();
    assert_eq!(bag.make(100).await.map(|v| v.len()), Ok(100));
    let m = limit_message(bag.make(101).await);
    assert!(m.contains("max_refs_per_message = 100"), "{m}");
    still_works(&client).await;
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_argument_over_the_peers_smaller_max_frame_len_fails_alone() {
    let mut small = Config::default();
    small.limits.max_frame_len = 100 * 1024;
    let (server, client) = bag_pair(small, Config::default()).await;
    let bag: BagRef = client.root();
    assert_eq!(bag.len(Bytes::from(vec![1; 90_000])).await, Ok(90_000));
    let m = limit_message(bag.len(Bytes::from(vec![1; 200_000])).await);
    assert!(m.contains("max_frame_len = 102400"), "{m}");
    still_works(&client).await;
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_answer_over_the_callers_smaller_max_frame_len_fails_alone() {
    let mut small = Config::default();
    small.limits.max_frame_len = 100 * 1024;
    let (server, client) = bag_pair(Config::default(), small).await;
    let bag: BagRef = client.root();
    assert_eq!(bag.blob(90_000).await.map(|b| b.len()), Ok(90_000));
    let m = limit_message(bag.blob(200_000).await);
    assert!(m.contains("max_frame_len = 102400"), "{m}");
    still_works(&client).await;
    assert!(!server.is_closed());
}

#[tokio::test(start_paused = true)]
async fn releases_are_split_to_the_peers_max_release_entries() {
    let mut small = Config::default();
    small.limits.message.max_release_entries = 16;
    let (server, client) = bag_pair(small, Config::default()).await;
    let bag: BagRef = client.root();
    let made = bag.make(100).await.unwrap();
    assert_eq!(server.stats().tables.exported, 100);
    // One handle each: dropping them all queues 100 releases at once.
    drop(made);
    assert!(settle(|| server.stats().tables.exported == 0).await);
    still_works(&client).await;
    assert!(!server.is_closed());
}

/// A dialed connection sends its first calls before the peer's hello (and limits) arrive: a
/// call within the floor every peer accepts leaves at once, a larger one waits for the peer's
/// hello and is then sent or refused against the peer's own limits.
#[tokio::test(start_paused = true)]
async fn calls_made_before_the_peers_hello_wait_for_it_past_the_floor() {
    let mut small = Config::default();
    small.limits.max_frame_len = 100 * 1024;
    let (a, b) = pb::transport::memory_pair();
    let client = Connection::dial(b, &Config::default(), None, None)
        .await
        .unwrap();
    let bag: BagRef = client.root();
    let call = |n: usize| {
        let bag = bag.clone();
        tokio::spawn(async move { bag.len(Bytes::from(vec![1; n])).await })
    };
    let small_call = call(10);
    let mid_call = call(90_000);
    let big_call = call(200_000);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // Only the small call was sent; the others wait for the server's hello.
    assert_eq!(client.stats().tables.pending_calls, 1);
    let _server = Connection::establish(
        a,
        &small,
        Side::Server,
        Some(BagRef::new(BagImpl).object_ref().clone()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(small_call.await.unwrap(), Ok(10));
    assert_eq!(mid_call.await.unwrap(), Ok(90_000));
    let m = limit_message(big_call.await.unwrap());
    assert!(m.contains("max_frame_len = 102400"), "{m}");
    still_works(&client).await;
}

/// A limit raised on an open connection (as a login does) is announced to the peer, which may
/// send up to it from then on.
#[tokio::test(start_paused = true)]
async fn a_raised_max_frame_len_is_announced_to_the_peer() {
    let mut small = Config::default();
    small.limits.max_frame_len = 100 * 1024;
    let (server, client) = bag_pair(small, Config::default()).await;
    let bag: BagRef = client.root();
    let m = limit_message(bag.len(Bytes::from(vec![1; 200_000])).await);
    assert!(m.contains("max_frame_len = 102400"), "{m}");
    server.set_max_frame_len(1 << 20);
    // The announcement leaves before the answer to the next call.
    assert_eq!(bag.len(Bytes::from_static(b"x")).await, Ok(1));
    assert_eq!(bag.len(Bytes::from(vec![1; 200_000])).await, Ok(200_000));
    still_works(&client).await;
    assert!(!server.is_closed());
}

// ---- answers nobody asked for -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn answers_to_calls_never_made_import_nothing_and_cost_the_connection() {
    let (server, mut peer) = raw_peer(Config::default()).await;
    // Three answers to calls the server never made, 1 024 fresh references each: nothing is
    // imported (a peer that sends them without reading makes the server hold nothing).
    for n in 0..3 {
        peer.write_all(&forged_answer(1000 + n, 1 + n * 1024))
            .await
            .unwrap();
    }
    // A call after them: once it is answered, they were handled.
    peer.write_all(&frame(&[1, 1, 1, 0, 3, b'a', b'd', b'd', 0, 2, 4]))
        .await
        .unwrap();
    let mut head = [0u8; 4];
    peer.read_exact(&mut head).await.unwrap();
    let mut body = vec![0; u32::from_be_bytes(head) as usize];
    peer.read_exact(&mut body).await.unwrap();
    assert_eq!(body[0], 2, "the call was answered");
    assert_eq!(server.stats().tables.imported, 0);
    // Each was a violation: the fourth closes the connection.
    let _ = peer.write_all(&forged_answer(2000, 5000)).await;
    let why = closed_with(&server).await;
    assert!(why.contains("max_violations = 3"), "{why}");
}
