//! What the broker's events make the driver do, once the broker's lock is released: wake
//! callers, run the export hooks of our objects, watch forwards, mark references dead, hand
//! cache updates to replicas, drop what the broker let go of. Any of it may run user code that
//! uses this very connection, which is why none of it runs under the lock.

use super::*;
use crate::broker::Event;

impl ConnShared {
    /// The budget of this connection's buffered cache updates, made with the first update
    /// (from the limits it enforces; it takes the broker's lock then).
    fn update_budget(&self) -> &Arc<crate::link::UpdateBudget> {
        self.updates
            .get_or_init(|| crate::link::UpdateBudget::of(self.lock().limits()))
    }

    /// Run `f` on the broker, then act on the events it raised once the lock is released.
    pub(crate) fn with_broker<R>(&self, f: impl FnOnce(&mut Broker) -> R) -> R {
        let mut events = Vec::new();
        let r = {
            let mut broker = self.lock();
            let r = f(&mut broker);
            broker.poll_events(&mut events);
            r
        };
        self.act(&mut events);
        r
    }

    /// Act on `events`, in order, leaving the list empty (its capacity kept for reuse).
    pub(crate) fn act(&self, events: &mut Vec<Event>) {
        // Most steps raise no event: not even a drain then.
        if events.is_empty() {
            return;
        }
        for event in events.drain(..) {
            match event {
                Event::Answered(waker) => waker.wake(),
                Event::Exported { id, object } => self.exported(id, object),
                Event::Resent { id, object } => {
                    if let RefInner::Local(d) = &object.0 {
                        d.on_resend(&self.link(id));
                    }
                }
                Event::Unexported { id, object } => match &object.0 {
                    RefInner::Local(d) => d.on_unexport(self.id, id),
                    RefInner::Remote(imp) => {
                        imp.dependents
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|(c, object)| {
                                !(*object == id && std::ptr::addr_eq(c.as_ptr(), self.me.as_ptr()))
                            });
                    }
                },
                Event::Revoked(import) => {
                    if let Some(imp) = import.upgrade() {
                        // No release for it: the owner freed it already.
                        imp.forget_count();
                        imp.revoke();
                    }
                }
                Event::Update { import, payload } => match import.upgrade() {
                    Some(imp) => {
                        // Made (under the broker's lock, once) before the replica's is taken.
                        let budget = self.update_budget();
                        imp.replica
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .deliver(payload, budget)
                    }
                    // No loss: a later send of the cache carries a newer state.
                    None => tracing::debug!("update for a reference no longer held"),
                },
                // Dropping the sender wakes the handler's cancellation branch.
                Event::Cancelled(watch) => drop(watch),
                Event::Dropped(object) => drop(object),
            }
        }
    }

    /// Where our export `id` lives, for the object's hooks.
    fn link(&self, id: u64) -> ExportLink {
        ExportLink {
            conn: self.me.clone(),
            connection: self.id,
            object: id,
        }
    }

    /// One of our objects was exported for the first time: its hook runs (a cache starts
    /// observing), or, for a forward, the object it forwards to is watched: if it dies, the
    /// peer hears that our export of it is revoked.
    fn exported(&self, id: u64, object: ObjectRef) {
        match &object.0 {
            RefInner::Local(d) => d.on_export(&self.link(id)),
            RefInner::Remote(imp) => {
                imp.dependents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((self.me.clone(), id));
                // Checked after the entry is in: a revocation either sees it or is seen here.
                if imp.is_dead() {
                    self.revoke_export(id);
                }
            }
        }
    }

    /// Whether our object is exported to the peer under `object`.
    pub(crate) fn is_exported(&self, object: u64) -> bool {
        self.lock().is_exported(object)
    }
}
