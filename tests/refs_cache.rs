//! Cacheable objects: the replica is created, updated in order, observation stops when it is
//! dropped, and sending the same cache twice reuses the replica (Twisted's `test_cache`).

mod common;

use pb::{Cache, CacheState, Replica};

#[pb::copyable]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Board {
    pub lines: Vec<String>,
}

#[pb::copyable]
#[derive(Debug, Clone)]
pub enum Edit {
    Push(String),
    Clear,
}

impl CacheState for Board {
    type Update = Edit;
    fn apply(&mut self, update: &Edit) {
        match update {
            Edit::Push(l) => self.lines.push(l.clone()),
            Edit::Clear => self.lines.clear(),
        }
    }
}

#[pb::remote]
pub trait Studio {
    async fn board(&self) -> Result<Replica<Board>, ()>;
    async fn write(&self, line: String) -> Result<u64, ()>;
}

struct StudioImpl {
    board: Cache<Board>,
}

impl Studio for StudioImpl {
    async fn board(&self) -> Result<Replica<Board>, ()> {
        // What the owner sends is a view of its cache; the peer receives a remote replica.
        Ok(self.board.replica())
    }
    async fn write(&self, line: String) -> Result<u64, ()> {
        self.board.update(Edit::Push(line)).map_err(|_| ())
    }
}

fn serve(board: &Cache<Board>) -> StudioRef {
    StudioRef::new(StudioImpl {
        board: board.clone(),
    })
}

#[tokio::test]
async fn replica_created_updated_in_order_and_released() {
    let board = Cache::new(Board {
        lines: vec!["first".into()],
    });
    let (server, client) = common::memory_pair(serve(&board)).await;
    let studio: StudioRef = client.root();
    let replica = studio.board().await.unwrap();
    assert_eq!(replica.get().lines, ["first"]);
    assert_eq!(board.observers(), 1);
    // Updates from the owner reach the replica, in order.
    for i in 0..100 {
        board.update(Edit::Push(format!("line {i}"))).unwrap();
    }
    let got = replica.wait_for(|b| b.lines.len() == 101).await.unwrap();
    let expected: Vec<String> = std::iter::once("first".to_string())
        .chain((0..100).map(|i| format!("line {i}")))
        .collect();
    assert_eq!(got.lines, expected);
    assert_eq!(replica.version(), 100);
    // Updates made through a call reach it too.
    assert_eq!(studio.write("via call".into()).await, Ok(101));
    let got = replica
        .wait_for(|b| b.lines.last().map(String::as_str) == Some("via call"))
        .await
        .unwrap();
    assert_eq!(got.lines.len(), 102);
    // Subscribers see changes.
    let mut rx = replica.subscribe();
    board.update(Edit::Clear).unwrap();
    rx.changed().await.unwrap();
    assert!(rx.borrow().value.lines.is_empty());

    // Dropping the replica stops the observation: the owner learns it and sends no more.
    drop(replica);
    drop(rx);
    assert_eq!(board.wait_for_observers(|n| n == 0).await, 0);
    assert_eq!(server.stats().tables.exported, 0);
    let before = client.stats().bytes_in;
    board.update(Edit::Push("unseen".into())).unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        client.stats().bytes_in,
        before,
        "no update is sent to a peer that stopped observing"
    );
}

#[tokio::test]
async fn sending_the_same_cache_twice_reuses_the_replica() {
    let board = Cache::new(Board::default());
    let (_server, client) = common::memory_pair(serve(&board)).await;
    let studio: StudioRef = client.root();
    let a = studio.board().await.unwrap();
    board.update(Edit::Push("x".into())).unwrap();
    let b = studio.board().await.unwrap();
    assert!(a == b, "one replica per cache per connection");
    assert_eq!(client.stats().tables.imported, 1);
    assert_eq!(b.wait_for(|s| s.lines == ["x"]).await.unwrap().lines, ["x"]);
    drop(a);
    // Still observed through `b`.
    board.update(Edit::Push("y".into())).unwrap();
    assert_eq!(
        b.wait_for(|s| s.lines.len() == 2).await.unwrap().lines,
        ["x", "y"]
    );
    assert_eq!(board.observers(), 1);
    drop(b);
    assert_eq!(board.wait_for_observers(|n| n == 0).await, 0);
}

#[tokio::test]
async fn every_observing_peer_is_updated_and_disconnect_stops_observing() {
    let board = Cache::new(Board::default());
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (server, client) = common::memory_pair(serve(&board)).await;
        let replica = client.root::<StudioRef>().board().await.unwrap();
        peers.push((server, client, replica));
    }
    assert_eq!(board.observers(), 3);
    board.update(Edit::Push("to all".into())).unwrap();
    for (_, _, r) in &peers {
        assert_eq!(
            r.wait_for(|b| !b.lines.is_empty()).await.unwrap().lines,
            ["to all"]
        );
    }
    // One peer's connection goes: it stops observing; the others go on.
    let (server, client, replica) = peers.pop().unwrap();
    server.abort();
    client.closed().await;
    assert_eq!(board.wait_for_observers(|n| n == 2).await, 2);
    assert!(!replica.is_connected());
    assert!(
        replica.wait_for(|_| false).await.is_err(),
        "a dead replica does not wait forever"
    );
    board.update(Edit::Push("to two".into())).unwrap();
    for (_, _, r) in &peers {
        assert_eq!(
            r.wait_for(|b| b.lines.len() == 2).await.unwrap().lines,
            ["to all", "to two"]
        );
    }
}

#[pb::remote]
pub trait Gallery {
    async fn board(&self) -> Result<Replica<Board>, ()>;
    async fn is_mine(&self, board: Replica<Board>) -> Result<bool, ()>;
}

struct GalleryImpl(Cache<Board>);

impl Gallery for GalleryImpl {
    async fn board(&self) -> Result<Replica<Board>, ()> {
        Ok(self.0.replica())
    }
    async fn is_mine(&self, board: Replica<Board>) -> Result<bool, ()> {
        Ok(board.is_local() && board == self.0.replica())
    }
}

#[tokio::test]
async fn a_replica_sent_home_arrives_as_the_owners_cache() {
    let board = Cache::new(Board::default());
    let (_server, client) = common::memory_pair(GalleryRef::new(GalleryImpl(board.clone()))).await;
    let gallery: GalleryRef = client.root();
    let replica = gallery.board().await.unwrap();
    assert!(!replica.is_local());
    // Sent back to its owner, it is the owner's own cache again.
    assert_eq!(gallery.is_mine(replica.clone()).await, Ok(true));
    // Another cache, owned by the client, is not.
    let other = Cache::new(Board::default());
    assert_eq!(gallery.is_mine(other.replica()).await, Ok(false));
    // A remote replica cannot be passed on as if it were the cache.
    assert!(matches!(
        pb::ObjectRef::from(ThingHolder::new())
            .call::<_, (), ()>("take", &(replica,))
            .await,
        Err(pb::CallError::Encode(_))
    ));
}

#[pb::remote]
pub trait Thing {
    async fn take(&self, board: Replica<Board>) -> Result<(), ()>;
}

struct ThingHolder;

impl ThingHolder {
    #[allow(clippy::new_ret_no_self)]
    fn new() -> ThingRef {
        ThingRef::new(ThingHolder)
    }
}

impl Thing for ThingHolder {
    async fn take(&self, _board: Replica<Board>) -> Result<(), ()> {
        Ok(())
    }
}
