//! The objects a connection exports to its peer, and how many times each was sent.
//!
//! Every send of an object counts one; the peer counts how many times it received the object
//! and, when its last handle is gone, releases that count. The object is freed when its count
//! reaches zero, so a release that crosses a new send of the same object never frees an object
//! the peer still holds:
//!
//! ```text
//! send ──▶ exported (count n) ──send──▶ count n+1
//!                │ └──release k < n──▶ count n-k
//!                ├──release k ≥ n──▶ freed (the token comes back to the driver)
//!                └──revoke / connection closed──▶ withdrawn (the token comes back)
//! ```
//!
//! A revoked id is remembered for a while (up to as many as the caller says, the oldest
//! forgotten first): the peer may have released the object before it heard of the revocation,
//! and that release, crossing the `Revoked` message on the wire, is no fault of the peer's.
//!
//! The table holds what the driver hands it: a `key` that names the object in this process
//! (for example the address of its allocation, so that the same object sent twice has one id)
//! and a token of the driver's choosing (`T`), given back when the export ends. Ids are ours,
//! allocated in order from 1 (0 is the root, which is never in the table) and never reused.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;

use crate::hash::IdHasher;

/// What a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The object was exported already, under this id; its count went up by one.
    Again(u64),
    /// The object is exported from now on, under this new id, with a count of one.
    New(u64),
}

impl Sent {
    /// The id the object is exported under.
    #[inline]
    pub fn id(self) -> u64 {
        match self {
            Sent::Again(id) | Sent::New(id) => id,
        }
    }
}

/// What a release from the peer did.
#[derive(Debug, PartialEq, Eq)]
pub enum Released<T> {
    /// No object is exported under that id: the peer broke the protocol.
    NotExported,
    /// The export was revoked lately: the peer released it before it heard so (no fault).
    Revoked,
    /// The object is still exported, `remaining` sends not released yet.
    Held {
        /// Sends not released yet.
        remaining: u64,
    },
    /// The count reached zero: the export ended and its token is the driver's again.
    /// `over` is set when the peer released more than it was sent (the count stops at zero).
    Freed {
        /// The token handed in when the object was first sent.
        token: T,
        /// The peer released more than it was sent.
        over: bool,
    },
}

struct Entry<T> {
    token: T,
    key: usize,
    count: u64,
}

/// The export table of one connection. See the [module docs](self).
pub struct Exports<T> {
    /// Keyed by ids we allocate (the peer only looks them up), so a cheap hash will do.
    by_id: HashMap<u64, Entry<T>, BuildHasherDefault<IdHasher>>,
    /// Keyed by the driver's keys of our own objects.
    by_key: HashMap<usize, u64, BuildHasherDefault<IdHasher>>,
    next: u64,
    /// Ids revoked lately, and the order they were revoked in (the oldest is forgotten first).
    revoked: HashSet<u64, BuildHasherDefault<IdHasher>>,
    revoked_order: VecDeque<u64>,
}

impl<T> Default for Exports<T> {
    fn default() -> Self {
        Exports {
            by_id: HashMap::default(),
            by_key: HashMap::default(),
            next: 1,
            revoked: HashSet::default(),
            revoked_order: VecDeque::new(),
        }
    }
}

impl<T> std::fmt::Debug for Exports<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exports")
            .field("len", &self.by_id.len())
            .field("next", &self.next)
            .finish()
    }
}

impl<T> Exports<T> {
    /// An empty table; the first id given out is 1.
    pub fn new() -> Exports<T> {
        Exports::default()
    }

    /// How many objects are exported.
    #[inline]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether nothing is exported.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether an object is exported under `id`.
    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The token of the object exported under `id`.
    #[inline]
    pub fn get(&self, id: u64) -> Option<&T> {
        self.by_id.get(&id).map(|e| &e.token)
    }

    /// Whether the object named `key` is exported.
    #[inline]
    pub fn contains_key(&self, key: usize) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Send the object named `key` once more: its count goes up, or it is exported from now on
    /// with the token `token` makes (called only then).
    #[inline]
    pub fn send(&mut self, key: usize, token: impl FnOnce() -> T) -> Sent {
        if let Some(&id) = self.by_key.get(&key)
            && let Some(e) = self.by_id.get_mut(&id)
        {
            e.count += 1;
            return Sent::Again(id);
        }
        let id = self.next;
        self.next += 1;
        self.by_id.insert(
            id,
            Entry {
                token: token(),
                key,
                count: 1,
            },
        );
        self.by_key.insert(key, id);
        Sent::New(id)
    }

    /// The peer released `count` sends of the object exported under `id`.
    #[inline]
    pub fn release(&mut self, id: u64, count: u64) -> Released<T> {
        let Some(e) = self.by_id.get_mut(&id) else {
            return match self.revoked.contains(&id) {
                true => Released::Revoked,
                false => Released::NotExported,
            };
        };
        let over = count > e.count;
        e.count = e.count.saturating_sub(count);
        if e.count > 0 {
            return Released::Held { remaining: e.count };
        }
        match self.remove(id) {
            Some(token) => Released::Freed { token, over },
            None => Released::NotExported,
        }
    }

    /// Withdraw the export under `id` whatever its count (the object is gone, or revoked),
    /// and remember that it was, among the `remember` ids revoked last: a release of it from
    /// the peer is then [`Released::Revoked`], not [`Released::NotExported`].
    pub fn revoke(&mut self, id: u64, remember: usize) -> Option<T> {
        let token = self.remove(id)?;
        if remember > 0 && self.revoked.insert(id) {
            self.revoked_order.push_back(id);
            while self.revoked_order.len() > remember {
                if let Some(old) = self.revoked_order.pop_front() {
                    self.revoked.remove(&old);
                }
            }
        }
        Some(token)
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let e = self.by_id.remove(&id)?;
        self.by_key.remove(&e.key);
        Some(e.token)
    }

    /// End every export (the connection is gone), giving back each id and token.
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, T)> + '_ {
        self.by_key.clear();
        self.by_id.drain().map(|(id, e)| (id, e.token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_object_sent_twice_has_one_id_and_a_count_of_two() {
        let mut t = Exports::new();
        assert_eq!(t.send(0xa0, || "a"), Sent::New(1));
        assert_eq!(t.send(0xb0, || "b"), Sent::New(2));
        let mut made = false;
        assert_eq!(
            t.send(0xa0, || {
                made = true;
                "a again"
            }),
            Sent::Again(1)
        );
        assert!(!made, "a token is made only for a new export");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(1), Some(&"a"));
        assert!(t.contains_key(0xa0) && t.contains(2) && !t.contains(3));
        assert_eq!(t.release(1, 1), Released::Held { remaining: 1 });
        assert_eq!(
            t.release(1, 1),
            Released::Freed {
                token: "a",
                over: false
            }
        );
        assert!(!t.contains_key(0xa0) && t.get(1).is_none());
    }

    #[test]
    fn a_release_crossing_a_new_send_frees_nothing() {
        // The peer got the object once and drops it (release 1) while we send it again: the
        // release arrives after the second send, and the object stays exported.
        let mut t = Exports::new();
        let id = t.send(7, || ()).id();
        t.send(7, || ());
        assert_eq!(t.release(id, 1), Released::Held { remaining: 1 });
        assert!(t.contains(id));
    }

    #[test]
    fn a_release_of_a_revoked_id_is_known_among_the_ids_revoked_last() {
        let mut t = Exports::new();
        let ids: Vec<u64> = (0..4).map(|k| t.send(k, || k).id()).collect();
        assert_eq!(t.revoke(ids[0], 2), Some(0));
        assert_eq!(t.revoke(ids[0], 2), None, "revoked once");
        assert_eq!(t.release(ids[0], 1), Released::Revoked);
        assert_eq!(
            t.release(ids[0], 1),
            Released::Revoked,
            "remembered, not used up"
        );
        assert_eq!(t.revoke(ids[1], 2), Some(1));
        assert_eq!(t.revoke(ids[2], 2), Some(2));
        // Two remembered: the oldest is forgotten.
        assert_eq!(t.release(ids[0], 1), Released::NotExported);
        assert_eq!(t.release(ids[1], 1), Released::Revoked);
        assert_eq!(t.release(ids[2], 1), Released::Revoked);
        // Remembering none, a revoked id is unknown at once.
        assert_eq!(t.revoke(ids[3], 0), Some(3));
        assert_eq!(t.release(ids[3], 1), Released::NotExported);
        assert_eq!(t.release(99, 1), Released::NotExported);
    }

    #[test]
    fn ids_are_never_reused_and_over_releases_are_reported() {
        let mut t = Exports::new();
        let first = t.send(1, || 1).id();
        assert_eq!(
            t.release(first, 5),
            Released::Freed {
                token: 1,
                over: true
            }
        );
        // The same object sent again gets a new id: the peer may still name the old one.
        assert_eq!(t.send(1, || 1), Sent::New(first + 1));
        assert_eq!(t.release(first, 1), Released::NotExported);
        assert_eq!(t.revoke(first + 1, 8), Some(1));
        assert_eq!(t.revoke(first + 1, 8), None);
        assert!(t.is_empty());
    }

    #[test]
    fn drain_gives_back_every_token() {
        let mut t = Exports::new();
        for k in 0..5 {
            t.send(k, || k);
        }
        let mut ended: Vec<(u64, usize)> = t.drain().collect();
        ended.sort_unstable();
        assert_eq!(ended, vec![(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]);
        assert!(t.is_empty() && !t.contains_key(3));
        assert_eq!(format!("{t:?}"), "Exports { len: 0, next: 6 }");
    }
}
