//! Disconnect: dead references fail at once, notifications fire exactly once, nothing stays
//! in any table, and exported objects are released.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pb::CallError;

#[pb::remote]
pub trait Probe {
    async fn ping(&self) -> Result<u8, ()>;
    async fn keep(&self, other: ProbeRef) -> Result<(), ()>;
    async fn child(&self) -> Result<ProbeRef, ()>;
}

struct P {
    dropped: Arc<AtomicUsize>,
    kept: std::sync::Mutex<Vec<ProbeRef>>,
}

impl P {
    fn new(dropped: &Arc<AtomicUsize>) -> P {
        P {
            dropped: dropped.clone(),
            kept: Default::default(),
        }
    }
}

impl Probe for P {
    async fn ping(&self) -> Result<u8, ()> {
        Ok(1)
    }
    async fn keep(&self, other: ProbeRef) -> Result<(), ()> {
        self.kept.lock().unwrap().push(other);
        Ok(())
    }
    async fn child(&self) -> Result<ProbeRef, ()> {
        Ok(ProbeRef::new(P::new(&self.dropped)))
    }
}

impl Drop for P {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn everything_is_released_and_notified_exactly_once() {
    let server_dropped = Arc::new(AtomicUsize::new(0));
    let client_dropped = Arc::new(AtomicUsize::new(0));
    let (server, client) = common::memory_pair(ProbeRef::new(P::new(&server_dropped))).await;
    let root: ProbeRef = client.root();
    // References both ways: three server objects held by the client, two client objects held
    // by the server.
    let children = [
        root.child().await.unwrap(),
        root.child().await.unwrap(),
        root.child().await.unwrap(),
    ];
    root.keep(ProbeRef::new(P::new(&client_dropped)))
        .await
        .unwrap();
    root.keep(ProbeRef::new(P::new(&client_dropped)))
        .await
        .unwrap();
    assert_eq!(client.stats().tables.imported, 3);
    assert_eq!(client.stats().tables.exported, 2);

    // Every reference gets a disconnect notification; count how often each fires.
    let fired = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for r in children.iter().chain([&root]) {
        let r = r.clone();
        let fired = fired.clone();
        waiters.push(tokio::spawn(async move {
            r.disconnected().await;
            fired.fetch_add(1, Ordering::SeqCst);
        }));
    }
    tokio::task::yield_now().await;
    assert_eq!(
        fired.load(Ordering::SeqCst),
        0,
        "nothing fires while connected"
    );

    server.abort();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(
        fired.load(Ordering::SeqCst),
        4,
        "each notification fired exactly once"
    );
    client.closed().await;

    // Dead references fail at once, without touching the network.
    for c in &children {
        assert!(!c.is_connected());
        assert_eq!(c.ping().await, Err(CallError::Disconnected));
    }
    // Nothing stays in any table on either side.
    for side in [&server, &client] {
        let t = side.stats().tables;
        assert_eq!(
            (t.exported, t.imported, t.pending_calls, t.in_flight_calls),
            (0, 0, 0, 0),
            "{t:?}"
        );
    }
    // Exports were released: the server's three children (held only through the connection)
    // and its root were freed; the client's dead handles do not keep them alive.
    assert_eq!(server_dropped.load(Ordering::Relaxed), 4);
    // The client's two objects, held only by the server, were freed too.
    assert_eq!(client_dropped.load(Ordering::Relaxed), 2);
    drop(children);
    // Waiting again completes at once.
    client.closed().await;
    root.disconnected().await;
}

#[pb::remote]
pub trait Hub {
    /// The reference this hub was made with.
    async fn upstream(&self) -> Result<ProbeRef, ()>;
}

struct TheHub(ProbeRef);

impl Hub for TheHub {
    async fn upstream(&self) -> Result<ProbeRef, ()> {
        Ok(self.0.clone())
    }
}

/// A serves a probe; B holds A's root (or a child of it) and hands it on to C; the A–B link is
/// cut. C's reference depends on that link and is revoked with it, for the root as for any
/// other object (a forward of the root was never revoked: `disconnected()` never fired at C).
#[tokio::test(start_paused = true)]
async fn a_forward_of_the_peers_root_is_revoked_when_its_link_is_lost() {
    let dropped = Arc::new(AtomicUsize::new(0));
    for forward_root in [true, false] {
        let (a_side, b_to_a) = common::memory_pair(ProbeRef::new(P::new(&dropped))).await;
        let a_root: ProbeRef = b_to_a.root();
        let upstream = if forward_root {
            a_root.clone()
        } else {
            a_root.child().await.unwrap()
        };
        let (_b_side, c_to_b) = common::memory_pair(HubRef::new(TheHub(upstream.clone()))).await;
        let at_c = c_to_b.root::<HubRef>().upstream().await.unwrap();
        assert_eq!(at_c.ping().await, Ok(1));
        a_side.abort();
        b_to_a.closed().await;
        upstream.disconnected().await;
        // Revoked at C once the revocation crossed B–C (virtual time: no real wait).
        tokio::time::timeout(std::time::Duration::from_secs(30), at_c.disconnected())
            .await
            .expect("C's reference was revoked");
        assert!(!at_c.is_connected());
        assert_eq!(at_c.ping().await, Err(CallError::Disconnected));
    }
}
