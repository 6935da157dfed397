//! References across the connection: the handle of an imported reference (`Imported`), its
//! release queue, and where an exported object lives (`ExportLink`).

use super::*;

/// A handle to an object the peer exported to us.
pub(crate) struct Imported {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) id: u64,
    pub(super) generation: u64,
    pub(super) received: AtomicU64,
    /// Where cache updates for this object go, if it is a cache.
    pub(crate) replica: Mutex<ReplicaSlot>,
    /// Set when the owner revoked the object, or when a connection it depends on was lost.
    pub(super) dead: AtomicBool,
    /// Wakes `disconnected()` waiters when the object is revoked.
    pub(super) revoked: Notify,
    /// Our exports to other peers that forward to this object: (connection, export id).
    pub(crate) dependents: Mutex<Vec<(Weak<ConnShared>, u64)>>,
}

/// Where an exported object lives: the connection and the id the peer knows it by.
#[doc(hidden)]
#[derive(Clone)]
pub struct ExportLink {
    pub(crate) conn: Weak<ConnShared>,
    pub(crate) connection: u64,
    pub(crate) object: u64,
}

impl Imported {
    pub(crate) fn add_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The fault of a call to the object once it is dead: it names a refused hello.
    pub(crate) fn dead_fault(&self) -> Fault {
        self.conn.close_fault()
    }

    /// Whether calls to the object can no longer succeed.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.conn.is_closed()
    }

    /// The owner withdrew the object: release nothing for it later.
    pub(crate) fn forget_count(&self) {
        self.received.store(0, Ordering::Relaxed);
    }

    /// Mark the object dead, wake its waiters, and revoke every forward of it that we export
    /// to other peers, which carries the failure on to them. Takes no lock of this connection.
    pub(crate) fn revoke(&self) {
        if self.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        self.revoked.notify_waiters();
        let dependents =
            std::mem::take(&mut *self.dependents.lock().unwrap_or_else(|p| p.into_inner()));
        for (conn, object) in dependents {
            if let Some(conn) = conn.upgrade() {
                conn.revoke_export(object);
            }
        }
    }

    /// Completes when the object is revoked or its connection is lost.
    pub(crate) async fn dead(&self) {
        loop {
            let revoked = self.revoked.notified();
            tokio::pin!(revoked);
            revoked.as_mut().enable();
            if self.is_dead() {
                return;
            }
            tokio::select! {
                _ = &mut revoked => {}
                _ = self.conn.closed() => return,
            }
        }
    }
}

impl Drop for Imported {
    fn drop(&mut self) {
        if self.id != 0 {
            let count = *self.received.get_mut();
            self.conn.queue_release(self.id, self.generation, count);
        }
    }
}

impl ConnShared {
    /// What makes the references the peer sends: the handle the broker's import table keeps,
    /// and the reference.
    pub(super) fn make_import(
        self: &Arc<Self>,
    ) -> impl FnMut(u64, u64) -> (Weak<Imported>, ObjectRef) + '_ {
        move |id, generation| {
            let imp = Arc::new(Imported {
                conn: self.clone(),
                id,
                generation,
                received: AtomicU64::new(if id == 0 { 0 } else { 1 }),
                replica: Mutex::new(ReplicaSlot::default()),
                dead: AtomicBool::new(false),
                revoked: Notify::new(),
                dependents: Mutex::new(Vec::new()),
            });
            (Arc::downgrade(&imp), ObjectRef(RefInner::Remote(imp)))
        }
    }

    pub(crate) fn root_ref(self: &Arc<Self>) -> ObjectRef {
        let mut make = self.make_import();
        make(0, 0).1
    }

    pub(super) fn queue_release(&self, id: u64, generation: u64, count: u64) {
        if self.is_closed() {
            return;
        }
        self.releases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, generation, count));
        self.releases_queued.store(true, Ordering::Release);
        self.wake_writer.notify_one();
    }

    /// Withdraw export `object` from the peer (it forwarded to something now unreachable).
    pub(crate) fn revoke_export(&self, object: u64) {
        if self.with_broker(|b| b.revoke_export(object)) {
            self.wake_writer.notify_one();
        }
    }
}
