//! References across the connection: making the handles of imported references
//! ([`Imported`]), and their release queue.

use super::*;

impl ConnShared {
    /// What makes the references the peer sends: the handle the broker's import table keeps,
    /// and the reference. The peer's root (`id` 0) is the connection's one root handle, made
    /// again only once none is left.
    pub(super) fn make_import(
        self: &Arc<Self>,
    ) -> impl FnMut(u64, u64) -> (Weak<Imported>, ObjectRef) + '_ {
        move |id, generation| {
            if id == 0 {
                let imp = self.root_handle();
                return (Arc::downgrade(&imp), ObjectRef(RefInner::Remote(imp)));
            }
            let imp = Arc::new(Imported::new(self.clone(), id, generation));
            (Arc::downgrade(&imp), ObjectRef(RefInner::Remote(imp)))
        }
    }

    /// The handle of the peer's root: the live one, or a new one kept (weakly) for next time.
    fn root_handle(self: &Arc<Self>) -> Arc<Imported> {
        let mut root = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(imp) = root.upgrade() {
            return imp;
        }
        let imp = Arc::new(Imported::new(self.clone(), 0, 0));
        *root = Arc::downgrade(&imp);
        imp
    }

    /// The connection closed: the handle of the peer's root is dead (and stays the one handle),
    /// and its forwards to other peers are revoked there.
    pub(super) fn revoke_root(&self) {
        let root = self
            .root
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade();
        if let Some(root) = root {
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
