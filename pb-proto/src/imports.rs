//! The references a connection holds to its peer's objects, one slot per object id.
//!
//! Each slot holds the driver's handle to the reference (`H`, typically a weak pointer to what
//! every clone of the reference shares) and a generation. The handle counts how many times the
//! peer sent the object; when the last clone is dropped, the driver releases that count with
//! the slot's generation. A send that arrives after the handle died but before its release was
//! handled opens a new generation with a new handle: the old release then still goes to the
//! peer (it counts the old sends) but no longer empties the slot.
//!
//! ```text
//! Sender(id) ──▶ slot (generation g, handle live) ──Sender(id)──▶ same handle, counted again
//!                    │ └──handle dead, Sender(id)──▶ slot (generation g+1, new handle)
//!                    ├──release (id, g)──▶ empty        (release (id, g-1) leaves it alone)
//!                    ├──Revoked(id)──▶ revoked ──release (id, g)──▶ empty, nothing to send
//!                    └──connection closed──▶ empty, handle given back
//! ```
//!
//! A revoked slot stays until its handle's release arrives, so the release can be told apart
//! from one the owner must hear of: the owner freed the object already and must not be sent
//! its count, however late the handle dies.
//!
//! The ids are the peer's: the table hashes them under a per-connection secret
//! ([`PeerKeys`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::hash::PeerKeys;

struct Slot<H> {
    handle: H,
    generation: u64,
    /// The owner withdrew the object: its release is not sent.
    revoked: bool,
}

/// What a release of a handle found in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The slot was emptied: send the count to the owner.
    Emptied,
    /// The slot belongs to a newer generation (or none): the count still goes to the owner,
    /// which counted those sends, but the slot stays.
    Stale,
    /// The owner revoked the object: the slot was emptied, and nothing is sent.
    Revoked,
}

/// The import table of one connection. See the [module docs](self).
pub struct Imports<H> {
    slots: HashMap<u64, Slot<H>, PeerKeys>,
    next_generation: u64,
}

impl<H> std::fmt::Debug for Imports<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imports")
            .field("len", &self.slots.len())
            .field("next_generation", &self.next_generation)
            .finish()
    }
}

impl<H> Imports<H> {
    /// An empty table hashing the peer's ids under `keys`.
    pub fn with_keys(keys: PeerKeys) -> Imports<H> {
        Imports {
            slots: HashMap::with_hasher(keys),
            next_generation: 1,
        }
    }

    /// How many distinct references are held.
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The handle held for the peer's object `id`.
    #[inline]
    pub fn get(&self, id: u64) -> Option<&H> {
        self.slots
            .get(&id)
            .filter(|s| !s.revoked)
            .map(|s| &s.handle)
    }

    /// The peer sent its object `id`: `live` gets the slot's handle and returns the live
    /// reference if the handle still has one (it counts the new receipt itself); otherwise
    /// `make` is given a new generation and returns the new handle and its live reference.
    /// One lookup either way.
    #[inline]
    pub fn receive<L>(
        &mut self,
        id: u64,
        live: impl FnOnce(&H) -> Option<L>,
        make: impl FnOnce(u64) -> (H, L),
    ) -> L {
        let slot = self.slots.entry(id);
        if let Entry::Occupied(s) = &slot
            && !s.get().revoked
            && let Some(l) = live(&s.get().handle)
        {
            return l;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let (handle, l) = make(generation);
        slot.insert_entry(Slot {
            handle,
            generation,
            revoked: false,
        });
        l
    }

    /// The last handle of generation `generation` to the peer's object `id` is gone: its slot
    /// is emptied unless a newer generation took it. Says whether the owner must hear of it.
    #[inline]
    pub fn release(&mut self, id: u64, generation: u64) -> Release {
        match self.slots.entry(id) {
            Entry::Occupied(s) if s.get().generation == generation => {
                if s.remove().revoked {
                    Release::Revoked
                } else {
                    Release::Emptied
                }
            }
            _ => Release::Stale,
        }
    }

    /// The peer withdrew its object `id`: the slot is marked revoked (it is emptied when its
    /// handle's release arrives, which is then not sent) and a copy of its handle given back.
    /// `None` if no reference to it is held, or it was revoked already.
    #[inline]
    pub fn revoke(&mut self, id: u64) -> Option<H>
    where
        H: Clone,
    {
        let slot = self.slots.get_mut(&id).filter(|s| !s.revoked)?;
        slot.revoked = true;
        Some(slot.handle.clone())
    }

    /// Empty the table (the connection is gone), giving back the handles.
    pub fn drain(&mut self) -> impl Iterator<Item = H> + '_ {
        self.slots.drain().map(|(_, s)| s.handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::{Rc, Weak};

    /// A handle as a driver keeps it: a weak pointer to a count of receipts.
    fn receive(
        t: &mut Imports<Weak<std::cell::Cell<u64>>>,
        id: u64,
    ) -> (Rc<std::cell::Cell<u64>>, u64) {
        let mut generation = None;
        let strong = t.receive(
            id,
            |h| {
                let s = h.upgrade()?;
                s.set(s.get() + 1);
                Some(s)
            },
            |g| {
                generation = Some(g);
                let s = Rc::new(std::cell::Cell::new(1));
                (Rc::downgrade(&s), s)
            },
        );
        (strong, generation.unwrap_or(0))
    }

    #[test]
    fn a_live_handle_is_reused_and_counts_each_receipt() {
        let mut t = Imports::with_keys(PeerKeys::new());
        let (a, g) = receive(&mut t, 9);
        assert_eq!(g, 1);
        let (b, again) = receive(&mut t, 9);
        assert_eq!(again, 0, "no new generation for a live handle");
        assert!(Rc::ptr_eq(&a, &b));
        assert_eq!(a.get(), 2);
        assert_eq!(t.len(), 1);
        assert!(t.get(9).is_some() && t.get(8).is_none());
    }

    #[test]
    fn a_send_crossing_a_release_opens_a_new_generation_the_old_release_leaves_alone() {
        let mut t = Imports::with_keys(PeerKeys::new());
        let (a, g1) = receive(&mut t, 5);
        drop(a); // the last clone: its release (5, g1) is on its way to the table
        let (b, g2) = receive(&mut t, 5);
        assert!(g2 > g1);
        assert_eq!(b.get(), 1, "the new handle counts only its own receipt");
        assert_eq!(
            t.release(5, g1),
            Release::Stale,
            "the old generation's release keeps the new slot"
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.release(5, g2), Release::Emptied);
        assert!(t.is_empty());
    }

    #[test]
    fn revoke_and_drain_give_the_handles_back() {
        let mut t = Imports::with_keys(PeerKeys::new());
        let (_a, _) = receive(&mut t, 1);
        let (_b, _) = receive(&mut t, 2);
        assert!(t.revoke(1).is_some());
        assert!(t.revoke(1).is_none());
        assert!(t.get(1).is_none(), "a revoked reference gets no updates");
        assert_eq!(t.drain().count(), 2);
        assert!(t.is_empty());
        assert!(format!("{t:?}").starts_with("Imports { len: 0"));
    }

    #[test]
    fn a_revoked_slot_is_not_reused_and_its_release_is_not_sent() {
        let mut t = Imports::with_keys(PeerKeys::new());
        let (a, g1) = receive(&mut t, 3);
        assert!(t.revoke(3).is_some());
        // A handle still alive is not counted again for a revoked id: a new generation.
        let (_b, g2) = receive(&mut t, 3);
        assert!(g2 > g1);
        drop(a);
        assert_eq!(t.release(3, g1), Release::Stale);
        let (c, g3) = receive(&mut t, 4);
        assert!(t.revoke(4).is_some());
        drop(c);
        assert_eq!(t.release(4, g3), Release::Revoked);
        assert_eq!(t.len(), 1);
    }
}
