//! Distributed reference counting: tables return to zero, quotas refuse cleanly.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pb::CallError;

#[pb::remote]
pub trait Cell {
    async fn get(&self) -> Result<u64, ()>;
}

struct Value(u64, Arc<AtomicUsize>);

impl Cell for Value {
    async fn get(&self) -> Result<u64, ()> {
        Ok(self.0)
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

#[pb::remote]
pub trait Factory {
    /// A new object, every time.
    async fn make(&self, v: u64) -> Result<CellRef, ()>;
    /// Calls the client's object once and forgets it.
    async fn read(&self, cell: CellRef) -> Result<u64, ()>;
    /// How many references arrived (the same object may come more than once).
    async fn count(&self, cells: Vec<CellRef>) -> Result<usize, ()>;
}

struct FactoryImpl {
    dropped: Arc<AtomicUsize>,
}

impl Factory for FactoryImpl {
    async fn make(&self, v: u64) -> Result<CellRef, ()> {
        Ok(CellRef::new(Value(v, self.dropped.clone())))
    }
    async fn read(&self, cell: CellRef) -> Result<u64, ()> {
        cell.get().await.map_err(|_| ())
    }
    async fn count(&self, cells: Vec<CellRef>) -> Result<usize, ()> {
        Ok(cells.len())
    }
}

/// A server serving a factory over an in-memory pipe, both ends with `config`; the counter
/// counts the factory's objects dropped.
async fn factory_pair(config: pb::Config) -> (pb::Connection, pb::Connection, Arc<AtomicUsize>) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let root = FactoryRef::new(FactoryImpl {
        dropped: dropped.clone(),
    });
    let (server, client) = common::memory_pair_with(root, config).await;
    (server, client, dropped)
}

#[tokio::test]
async fn a_hundred_thousand_cycles_leave_both_tables_empty() {
    const CYCLES: u64 = 100_000;
    let server_dropped = Arc::new(AtomicUsize::new(0));
    let client_dropped = Arc::new(AtomicUsize::new(0));
    let (server, client) = common::memory_pair(FactoryRef::new(FactoryImpl {
        dropped: server_dropped.clone(),
    }))
    .await;
    let f: FactoryRef = client.root();
    for i in 0..CYCLES {
        if i % 2 == 0 {
            // The server creates an object and passes it; the client calls it and drops it.
            let cell = f.make(i).await.unwrap();
            assert_eq!(cell.get().await, Ok(i));
        } else {
            // The client creates one and passes it; the server calls it back and drops it.
            let cell = CellRef::new(Value(i, client_dropped.clone()));
            assert_eq!(f.read(cell).await, Ok(i));
        }
    }
    let empty = common::settle(|| {
        let (s, c) = (server.stats().tables, client.stats().tables);
        s.exported + s.imported + c.exported + c.imported == 0
    })
    .await;
    assert!(
        empty,
        "server {:?}, client {:?}",
        server.stats().tables,
        client.stats().tables
    );
    // Every object was freed on its owner's side: nothing is kept alive by a stale count.
    assert_eq!(server_dropped.load(Ordering::Relaxed) as u64, CYCLES / 2);
    assert_eq!(client_dropped.load(Ordering::Relaxed) as u64, CYCLES / 2);
    assert_eq!(
        server.stats().tables.pending_calls + client.stats().tables.pending_calls,
        0
    );
}

#[tokio::test]
async fn the_same_object_sent_many_times_is_one_entry_counted_many_times() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (server, client) = common::memory_pair(FactoryRef::new(FactoryImpl {
        dropped: dropped.clone(),
    }))
    .await;
    let f: FactoryRef = client.root();
    let mine = CellRef::new(Value(7, dropped.clone()));
    for _ in 0..5 {
        assert_eq!(f.read(mine.clone()).await, Ok(7));
    }
    assert!(common::settle(|| client.stats().tables.exported == 0).await);
    // Still alive here: we hold it.
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
    drop(mine);
    assert_eq!(dropped.load(Ordering::Relaxed), 1);
    assert_eq!(server.stats().tables.imported, 0);
}

#[tokio::test]
async fn the_export_quota_refuses_cleanly_and_survives_one_violation() {
    let mut config = pb::Config::default();
    config.limits.max_exports = 5;
    config.limits.max_violations = 3;
    let dropped = Arc::new(AtomicUsize::new(0));
    let (server, client) =
        common::memory_pair_with(FactoryRef::new(FactoryImpl { dropped }), config).await;
    let f: FactoryRef = client.root();
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(f.make(i).await.unwrap());
    }
    match f.make(99).await {
        Err(CallError::LimitExceeded(m)) => assert!(m.contains("max_exports = 5"), "{m}"),
        other => panic!("expected the export limit, got {other:?}"),
    }
    // One violation: the connection lives on and the held references still work.
    assert!(!client.is_closed());
    assert_eq!(held[4].get().await, Ok(4));
    // Releasing one makes room again.
    held.pop();
    assert!(common::settle(|| server.stats().tables.exported == 4).await);
    assert_eq!(f.make(5).await.map(|_| ()), Ok(()));
}

#[tokio::test]
async fn the_export_quota_counts_each_object_once_however_often_a_message_carries_it() {
    let mut config = pb::Config::default();
    config.limits.max_exports = 3;
    let (server, client, dropped) = factory_pair(config).await;
    let f: FactoryRef = client.root();
    let cells: Vec<CellRef> = (0..4)
        .map(|v| CellRef::new(Value(v, dropped.clone())))
        .collect();
    let pick = |which: &[usize]| which.iter().map(|&i| cells[i].clone()).collect::<Vec<_>>();
    // Few references (counted without a set) and many (with one): three distinct objects fit
    // the quota however often they repeat; a fourth does not, and the error counts four.
    for message in [vec![0, 0, 1], vec![0, 1, 2, 0, 2], [0, 1, 2].repeat(4)] {
        assert_eq!(f.count(pick(&message)).await, Ok(message.len()));
        assert!(common::settle(|| client.stats().tables.exported == 0).await);
    }
    for message in [vec![0, 1, 2, 3], [3, 2, 1, 0].repeat(3)] {
        match f.count(pick(&message)).await {
            Err(CallError::LimitExceeded(m)) => {
                assert!(m.contains("exporting 4 more objects"), "{m}")
            }
            other => panic!("expected the export limit, got {other:?}"),
        }
        assert_eq!(client.stats().tables.exported, 0);
    }
    assert!(!client.is_closed() && !server.is_closed());
}

#[tokio::test]
async fn a_peer_that_keeps_violating_is_disconnected() {
    let mut config = pb::Config::default();
    config.limits.max_imports = 2;
    config.limits.max_violations = 3;
    let (server, client, dropped) = factory_pair(config).await;
    let f: FactoryRef = client.root();
    let mut refused = 0;
    for i in 0..10u64 {
        // A call within the limits works.
        if client.is_closed() {
            break;
        }
        assert_eq!(f.read(CellRef::new(Value(i, dropped.clone()))).await, Ok(i));
        // Three references in one call exceed max_imports = 2: refused before dispatch.
        let cells: Vec<_> = (0..3)
            .map(|j| CellRef::new(Value(j, dropped.clone())))
            .collect();
        match f.object_ref().call::<_, (), ()>("read", &(cells,)).await {
            Err(CallError::LimitExceeded(m)) => {
                assert!(m.contains("max_imports = 2"), "{m}");
                refused += 1;
            }
            Err(CallError::Disconnected) => break,
            other => panic!("expected the import limit, got {other:?}"),
        }
    }
    // Three violations are tolerated; the fourth is still answered (nothing is dropped
    // silently), then the connection is closed.
    assert_eq!(refused, 4);
    client.closed().await;
    assert!(server.is_closed());
}

/// An object whose `Drop` uses the connection it was exported on.
struct Chatty(pb::Connection, Arc<AtomicUsize>);

impl Cell for Chatty {
    async fn get(&self) -> Result<u64, ()> {
        Ok(0)
    }
}

impl Drop for Chatty {
    fn drop(&mut self) {
        // Touches the connection's state: must not find its lock held.
        let _ = self.0.stats();
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

#[pb::remote]
pub trait ChattyMaker {
    async fn make(&self, caller: pb::Caller) -> Result<CellRef, ()>;
}

struct ChattyMakerImpl(Arc<AtomicUsize>);

impl ChattyMaker for ChattyMakerImpl {
    async fn make(&self, caller: pb::Caller) -> Result<CellRef, ()> {
        let conn = caller.connection().cloned().ok_or(())?;
        Ok(CellRef::new(Chatty(conn, self.0.clone())))
    }
}

#[tokio::test]
async fn an_object_whose_drop_uses_its_connection_can_be_released() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (server, client) =
        common::memory_pair(ChattyMakerRef::new(ChattyMakerImpl(dropped.clone()))).await;
    let maker: ChattyMakerRef = client.root();
    for _ in 0..3 {
        let cell = maker.make().await.unwrap();
        assert_eq!(cell.get().await, Ok(0));
        drop(cell);
    }
    // Released by the peer: dropped on the server without deadlocking its connection.
    let released = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        common::settle(|| dropped.load(Ordering::SeqCst) == 3).await
    })
    .await;
    assert_eq!(released, Ok(true));
    assert_eq!(server.stats().tables.exported, 0);
    // Lost with the connection: dropped too.
    let _kept = maker.make().await.unwrap();
    server.abort();
    assert!(common::settle(|| dropped.load(Ordering::SeqCst) == 4).await);
}
