//! References across the connection: making the handles of imported references
//! ([`Imported`]), and their release queue.

use super::*;

impl ConnShared {
    /// What makes the references the peer sends: the handle the broker's import table keeps,
    /// and the reference.
    pub(super) fn make_import(
        self: &Arc<Self>,
    ) -> impl FnMut(u64, u64) -> (Weak<Imported>, ObjectRef) + '_ {
        move |id, generation| {
            let imp = Arc::new(Imported::new(self.clone(), id, generation));
            let weak = Arc::downgrade(&imp);
            if id == 0 {
                self.note_root(&weak);
            }
            (weak, ObjectRef(RefInner::Remote(imp)))
        }
    }

    /// Keep `root`, a handle of the peer's root, to revoke when the connection closes; the
    /// handles dropped since are let go whenever the list doubles.
    fn note_root(&self, root: &Weak<Imported>) {
        let mut roots = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        roots.push(root.clone());
        if roots.len() >= 8 && roots.len().is_power_of_two() {
            roots.retain(|r| r.strong_count() > 0);
        }
    }

    /// The connection closed: the handles of the peer's root are dead, and their forwards to
    /// other peers are revoked there.
    pub(super) fn revoke_roots(&self) {
        let roots = std::mem::take(&mut *self.roots.lock().unwrap_or_else(|p| p.into_inner()));
        for root in roots.iter().filter_map(Weak::upgrade) {
            root.revoke();
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
