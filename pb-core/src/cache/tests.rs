//! Unit tests of `cache`.

use super::*;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Sum(u64);

impl CacheState for Sum {
    type Update = u64;
    fn apply(&mut self, d: &u64) {
        self.0 += d;
    }
}

fn add(version: u64, d: u64) -> Bytes {
    encode_msg(&CacheMsg::<(), u64>::Apply { version, update: d }).unwrap()
}

fn replace(version: u64, value: u64) -> Bytes {
    encode_msg(&CacheMsg::<Sum, ()>::Replace {
        version,
        state: Sum(value),
    })
    .unwrap()
}

fn seen(st: &ReplicaState<Sum>) -> (u64, u64) {
    let v = st.state.borrow();
    (v.version, v.value.0)
}

#[test]
fn an_update_out_of_sequence_is_reported_and_a_full_state_resyncs() {
    let st = ReplicaState::new(0, Sum(0));
    let mut rx = st.state.subscribe();
    st.apply(&add(1, 1));
    // What the replica has already is no gap (a full state overlaps the updates around it).
    st.apply(&add(1, 1));
    st.apply(&replace(1, 1));
    assert_eq!((seen(&st), st.error()), ((1, 1), None));
    rx.borrow_and_update();
    st.apply(&add(3, 1));
    assert_eq!(
        st.error(),
        Some(ReplicaError::OutOfSequence { have: 1, got: 3 })
    );
    assert!(rx.has_changed().unwrap(), "waiters are woken");
    st.apply(&add(4, 1));
    assert_eq!(seen(&st), (1, 1), "updates past a gap do not apply");
    st.apply(&replace(4, 4));
    assert_eq!(
        (seen(&st), st.error()),
        ((4, 4), None),
        "a full state resyncs"
    );
    st.apply(&add(5, 1));
    assert_eq!(seen(&st), (5, 5));
}

#[test]
fn an_undecodable_update_is_reported() {
    let st = ReplicaState::new(7, Sum(0));
    st.apply(&[0xff; 3]);
    assert!(
        matches!(st.error(), Some(ReplicaError::Undecodable { have: 7, .. })),
        "{:?}",
        st.error()
    );
    assert_eq!(seen(&st), (7, 0));
}

#[test]
fn updates_past_the_buffer_are_marked_dropped() {
    let budget = crate::link::UpdateBudget::new(usize::MAX, 16 << 20);
    let mut slot = ReplicaSlot::default();
    for v in 1..=MAX_BUFFERED_UPDATES as u64 + 2 {
        slot.deliver(add(v, 1), &budget);
    }
    match slot {
        ReplicaSlot::Buffered {
            pending,
            overflowed,
            ..
        } => {
            assert_eq!(pending.len(), MAX_BUFFERED_UPDATES);
            assert!(overflowed);
        }
        _ => panic!("updates before the replica are buffered"),
    }
}

#[test]
fn updates_past_the_buffers_bytes_are_marked_dropped() {
    let budget = crate::link::UpdateBudget::new(usize::MAX, 16 << 20);
    let mut slot = ReplicaSlot::default();
    let mib = Bytes::from(vec![0u8; 1 << 20]);
    for _ in 0..20 {
        slot.deliver(mib.clone(), &budget);
    }
    match &slot {
        ReplicaSlot::Buffered {
            pending,
            charge,
            overflowed,
        } => {
            assert_eq!(pending.len(), 16, "16 MiB kept");
            assert_eq!(charge.bytes, 16 << 20);
            assert!(overflowed);
        }
        _ => panic!("updates before the replica are buffered"),
    }
    assert_eq!(budget.used(), 16 << 20);
    drop(slot);
    assert_eq!(budget.used(), 0, "a dropped buffer gives its bytes back");
}

#[test]
fn the_replicas_of_one_connection_share_its_budget() {
    // 3 MiB for the connection: the first replica takes 2, the second gets 1 of its 2, and
    // drops what follows a dropped one.
    let budget = crate::link::UpdateBudget::new(3 << 20, 16 << 20);
    let mib = Bytes::from(vec![0u8; 1 << 20]);
    let (mut first, mut second) = (ReplicaSlot::default(), ReplicaSlot::default());
    first.deliver(mib.clone(), &budget);
    first.deliver(mib.clone(), &budget);
    second.deliver(mib.clone(), &budget);
    second.deliver(mib.clone(), &budget);
    assert_eq!(budget.used(), 3 << 20);
    drop(first);
    second.deliver(mib.clone(), &budget);
    match &second {
        ReplicaSlot::Buffered {
            pending,
            overflowed,
            ..
        } => assert_eq!(
            (pending.len(), *overflowed),
            (1, true),
            "no gap is buffered"
        ),
        _ => panic!("updates before the replica are buffered"),
    }
    assert_eq!(budget.used(), 1 << 20);
    drop(second);
    assert_eq!(budget.used(), 0);
}

#[test]
fn an_update_that_cannot_be_encoded_changes_nothing() {
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    struct Refs(u64);
    impl CacheState for Refs {
        type Update = ObjectRef;
        fn apply(&mut self, _: &ObjectRef) {
            self.0 += 1;
        }
    }
    let cache = Cache::new(Refs(0));
    let object = ObjectRef::from_arc(cache.inner.clone());
    assert!(cache.update(object).is_err());
    assert_eq!((cache.version(), cache.get().0), (0, 0));
}

mod unexport_tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
    struct Count(u64);

    impl CacheState for Count {
        type Update = u64;
        fn apply(&mut self, d: &u64) {
            self.0 += d;
        }
    }

    fn link(connection: u64, object: u64) -> ExportLink {
        ExportLink {
            // A connection that is gone (the driver's type only names a `Weak` that never was).
            conn: std::sync::Weak::<crate::connection::ConnShared>::new(),
            connection,
            object,
        }
    }

    #[test]
    fn a_late_unexport_of_an_earlier_export_keeps_the_newer_observer() {
        let cache = Cache::new(Count(0));
        let inner = cache.inner.clone();
        inner.observe(&link(7, 1));
        assert_eq!(cache.observers(), 1);
        // The peer released export 1 and the cache was sent again (export 2) before the
        // release's hook ran, outside the connection's lock.
        inner.observe(&link(7, 2));
        inner.on_unexport(7, 1);
        assert_eq!(cache.observers(), 1, "export 2 still observes");
        inner.on_unexport(7, 2);
        assert_eq!(cache.observers(), 0);
        // Unknown connections and ids change nothing.
        inner.on_unexport(8, 2);
        assert_eq!(cache.observers(), 0);
    }

    #[test]
    fn an_export_hook_that_runs_after_its_connection_ended_leaves_no_observer() {
        let cache = Cache::new(Count(0));
        // The connection closed (its unexport hooks ran, finding nothing) before this export's
        // hook ran: the hook must not leave an observer that nothing will remove.
        cache.inner.on_export(&link(7, 1));
        assert_eq!(cache.observers(), 0);
        cache.inner.on_resend(&link(7, 1));
        assert_eq!(cache.observers(), 0);
    }
}

/// Encodings of a replica whose message never exports it (here: calls to connections that
/// have just closed) leave no entry behind once their connections are gone: there used to be
/// one per such connection, kept as long as the cache lived.
#[tokio::test(start_paused = true)]
async fn encodings_that_never_leave_are_let_go_with_their_connections() {
    async fn pair(root: ObjectRef) -> (crate::Connection, crate::Connection) {
        let (a, b) = crate::transport::memory_pair();
        let config = crate::Config::default();
        tokio::try_join!(
            crate::Connection::establish(a, &config, crate::Side::Server, Some(root), None),
            crate::Connection::establish(b, &config, crate::Side::Client, None, None),
        )
        .unwrap()
    }
    let cache = Cache::new(Sum(0));
    let served = Cache::new(Sum(0));
    for _ in 0..50 {
        let (server, client) = pair(ObjectRef::from_arc(served.inner.clone())).await;
        let root = client.root_ref();
        server.abort();
        client.closed().await;
        let r = root.call::<_, (), ()>("take", &(cache.replica(),)).await;
        assert!(matches!(r, Err(CallError::Disconnected)), "{r:?}");
    }
    let left = lock(&cache.inner.observers).encoded.len();
    assert!(left < 16, "{left} entries left for 50 closed connections");
    assert_eq!(cache.observers(), 0);
}
