//! References forwarded through a third party: one object forwarded twice stays one
//! reference, and releases that cross the revocation of a forward cost the link nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

#[pb::remote]
pub trait Factory {
    /// A new object every time.
    async fn make(&self, v: u64) -> Result<CellRef, ()>;
}

struct FactoryImpl(Arc<AtomicUsize>);

impl Factory for FactoryImpl {
    async fn make(&self, v: u64) -> Result<CellRef, ()> {
        Ok(CellRef::new(Value(v, self.0.clone())))
    }
}

/// B's root: hands on (forwards) what it fetches from A, and answers a ping itself.
#[pb::remote]
pub trait Hub {
    async fn fetch(&self, v: u64) -> Result<CellRef, ()>;
    async fn ping(&self) -> Result<u8, ()>;
    /// A's root, fetched twice from B's connection to A (`conn.root()` twice), handed on.
    async fn upstream_twice(&self) -> Result<(FactoryRef, FactoryRef, bool), ()>;
}

struct TheHub(pb::Connection);

impl Hub for TheHub {
    async fn fetch(&self, v: u64) -> Result<CellRef, ()> {
        self.0.root::<FactoryRef>().make(v).await.map_err(|_| ())
    }
    async fn ping(&self) -> Result<u8, ()> {
        Ok(1)
    }
    async fn upstream_twice(&self) -> Result<(FactoryRef, FactoryRef, bool), ()> {
        let a: FactoryRef = self.0.root();
        let b: FactoryRef = self.0.root();
        let equal_here = a.object_ref() == b.object_ref();
        Ok((a, b, equal_here))
    }
}

/// A serves a factory; B dials A and serves a hub to C; C fetches cells made on A through B
/// (forwards). Returns (A's side of A–B, B's side of A–B, B's side of B–C, C's side of B–C).
async fn three_parties() -> (
    pb::Connection,
    pb::Connection,
    pb::Connection,
    pb::Connection,
    Arc<AtomicUsize>,
) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (a_side, b_to_a) = common::memory_pair(FactoryRef::new(FactoryImpl(dropped.clone()))).await;
    let (b_side, c_to_b) = common::memory_pair(HubRef::new(TheHub(b_to_a.clone()))).await;
    (a_side, b_to_a, b_side, c_to_b, dropped)
}

/// C holds five cells of A's, forwarded by B. C drops four of them (their releases leave for
/// B) at the moment B loses its link to A, which revokes B's forwards on B–C. The releases and
/// the revocations cross on the wire: an honest race. B must not count C's releases of the
/// ids it just revoked as protocol violations — four of them exceed `max_violations` (3) and
/// B cuts its link to C, which depends on nothing that was lost.
#[tokio::test(start_paused = true)]
async fn releases_crossing_revocations_do_not_cut_an_innocent_link() {
    // B's warnings, to show what it counted as violations.
    let log = common::Capture::default();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    let (_a_side, b_to_a, b_side, c_to_b, _dropped) = three_parties().await;
    let hub: HubRef = c_to_b.root();
    let mut cells = Vec::new();
    for v in 0..5 {
        let cell = hub.fetch(v).await.unwrap();
        assert_eq!(cell.get().await, Ok(v));
        cells.push(cell);
    }
    let kept = cells.pop().unwrap();
    // C lets go of four forwards: releases queued toward B ...
    drop(cells);
    // ... while, before any of them reached B, B's link to A goes (B revokes the forwards).
    b_to_a.abort();
    // The revocations reach C.
    tokio::time::timeout(Duration::from_secs(30), kept.disconnected())
        .await
        .expect("C's remaining forward was revoked");
    // B–C depends on nothing that was lost: it must still work.
    let ping = hub.ping().await;
    assert_eq!(
        ping,
        Ok(1),
        "B–C closed: B's reason {:?}, C's reason {:?}; B warned {} times \
         \"peer released an object we do not export\"",
        b_side.close_reason(),
        c_to_b.close_reason(),
        log.text()
            .matches("peer released an object we do not export")
            .count()
    );
    assert!(!c_to_b.is_closed() && !b_side.is_closed());
}

/// B fetches A's root twice (`conn.root()`), gets two references that are equal on B, and
/// hands both to C in one answer. C received two stubs for one object over one connection:
/// the guide says they are equal ("Two stubs received over one connection for the same object
/// are equal") and that the receiver keeps one handle per distinct object.
#[tokio::test(start_paused = true)]
async fn one_object_forwarded_twice_is_one_reference_at_the_receiver() {
    let (_a_side, _b_to_a, b_side, c_to_b, _dropped) = three_parties().await;
    let hub: HubRef = c_to_b.root();
    let (x, y, equal_at_b) = hub.upstream_twice().await.unwrap();
    assert!(equal_at_b, "B's two references to A's root are equal");
    assert!(
        x.object_ref() == y.object_ref(),
        "C's two stubs for the one object are not equal: {:?} vs {:?} (B exports {}, C imports {})",
        x.object_ref(),
        y.object_ref(),
        b_side.stats().tables.exported,
        c_to_b.stats().tables.imported
    );
    assert_eq!(
        (
            b_side.stats().tables.exported,
            c_to_b.stats().tables.imported
        ),
        (1, 1),
        "one object exported by B and imported by C"
    );
}
