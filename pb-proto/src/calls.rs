//! The call tables of one connection: our calls awaiting answers ([`Pending`]), and the peer's
//! calls running here ([`Running`]).
//!
//! Our calls are numbered in our direction from 1, in order, and never reused while the
//! connection lives; each pending call is a slot, not a channel, so a call allocates nothing to
//! be answered. The slot holds a token of the driver's while it waits (whatever wakes the
//! caller) and the answer once it arrived, until the caller takes it:
//!
//! ```text
//! start ─▶ Waiting(w) ─deliver─▶ Answered(a) ─poll─▶ removed (the caller has a)
//!              │  └──poll──▶ Waiting(w') (the token refreshed)
//!              ├──cancel / fail_waiting──▶ removed
//!              └──cancel, kept──▶ Cancelled ─deliver (the peer's last word)─▶ removed
//! ```
//!
//! Each call also keeps its length as the peer's call window counts it, given back when the
//! call leaves the window: when its answer arrives, or, for a call cancelled while the peer
//! counts it, when the peer's last word on it does.
//!
//! A call's id names its promised answer from the moment it is started, before any byte is
//! sent: that is what a later call may target once the wire can say "the answer of request N"
//! (promise pipelining), with this table resolving it when the answer arrives.
//!
//! The peer's calls are counted while they run (`in_flight`, bounded by the connection's
//! limit); those whose handlers wait are entered, by the peer's request id, with a token the
//! driver uses to cancel them (dropping it, for example).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasherDefault;

use crate::hash::{IdHasher, PeerKeys};

enum Slot<W, A> {
    /// The token, and the call's length in the peer's window.
    Waiting(W, usize),
    Answered(A),
    /// Cancelled while the peer still counts it: its length, until the peer's last word.
    Cancelled(usize),
}

/// What a poll of a pending call found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled<A> {
    /// The answer: the call left the table.
    Ready(A),
    /// Still waiting (the token was refreshed).
    Waiting,
    /// The call is not in the table: cancelled, taken already, or failed by the connection's
    /// end.
    Gone,
}

/// Our calls awaiting answers. See the [module docs](self).
pub struct Pending<W, A> {
    /// Keyed by our own request ids (sequential, never chosen by the peer): a cheap hash.
    slots: HashMap<u64, Slot<W, A>, BuildHasherDefault<IdHasher>>,
    next: u64,
    /// How many of `slots` are cancelled calls still counted by the peer.
    cancelled: usize,
}

impl<W, A> Default for Pending<W, A> {
    fn default() -> Self {
        Pending {
            slots: HashMap::default(),
            next: 1,
            cancelled: 0,
        }
    }
}

impl<W, A> std::fmt::Debug for Pending<W, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("len", &self.slots.len())
            .field("next", &self.next)
            .finish()
    }
}

impl<W, A> Pending<W, A> {
    /// An empty table; the first request id is 1.
    pub fn new() -> Pending<W, A> {
        Pending::default()
    }

    /// How many calls are in the table, waiting or answered and not taken yet (cancelled calls
    /// still counted by the peer are not: see [`Pending::cancelled`]).
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len() - self.cancelled
    }

    /// How many cancelled calls wait for the peer's last word. They are bounded by the peer's
    /// call window, in which each still counts.
    #[inline]
    pub fn cancelled(&self) -> usize {
        self.cancelled
    }

    /// Whether the table is empty (cancelled calls included).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next request id, for a call that wants no answer (it never enters the table).
    #[inline]
    pub fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// Whether call `id` waits for its answer (started, not answered, not cancelled).
    #[inline]
    pub fn is_waiting(&self, id: u64) -> bool {
        matches!(self.slots.get(&id), Some(Slot::Waiting(..)))
    }

    /// Whether `id` was given out by [`Pending::next_id`] (whatever became of the call).
    #[inline]
    pub fn was_issued(&self, id: u64) -> bool {
        id != 0 && id < self.next
    }

    /// Enter call `id` (from [`Pending::next_id`]) as waiting, with the driver's token and
    /// its length in the peer's call window (0 if the peer counts none).
    #[inline]
    pub fn wait(&mut self, id: u64, token: W, len: usize) {
        self.slots.insert(id, Slot::Waiting(token, len));
    }

    /// The answer of call `id` arrived: it is kept for the caller, and the waiting token goes
    /// to `wake`; returns the call's length in the peer's window, which it leaves. `Err` gives
    /// the answer back if the call is not waiting (answered already, or never made), or was
    /// cancelled (the answer is its last word: the call leaves the table, and its length comes
    /// back with the answer; 0 otherwise).
    #[inline]
    pub fn deliver(
        &mut self,
        id: u64,
        answer: A,
        wake: impl FnOnce(W),
    ) -> Result<usize, (A, usize)> {
        match self.slots.get_mut(&id) {
            Some(slot @ Slot::Waiting(..)) => {
                if let Slot::Waiting(token, len) = std::mem::replace(slot, Slot::Answered(answer)) {
                    wake(token);
                    return Ok(len);
                }
                Ok(0)
            }
            Some(Slot::Cancelled(_)) => match self.slots.remove(&id) {
                Some(Slot::Cancelled(len)) => {
                    self.cancelled -= 1;
                    Err((answer, len))
                }
                _ => Err((answer, 0)),
            },
            _ => Err((answer, 0)),
        }
    }

    /// The peer's last word on call `id`, cancelled and still counted, came without being
    /// delivered: the call leaves the table; returns its length in the peer's window (0 if it
    /// was not such a call).
    #[inline]
    pub fn close_cancelled(&mut self, id: u64) -> usize {
        match self.slots.get(&id) {
            Some(Slot::Cancelled(len)) => {
                let len = *len;
                self.slots.remove(&id);
                self.cancelled -= 1;
                len
            }
            _ => 0,
        }
    }

    /// The caller of call `id` asks for its answer: `Ready` takes it out of the table;
    /// `Waiting` lets `refresh` update the token first. One lookup either way.
    #[inline]
    pub fn poll(&mut self, id: u64, refresh: impl FnOnce(&mut W)) -> Polled<A> {
        let mut slot = match self.slots.entry(id) {
            Entry::Occupied(slot) => slot,
            Entry::Vacant(_) => return Polled::Gone,
        };
        match slot.get_mut() {
            Slot::Waiting(token, _) => {
                refresh(token);
                return Polled::Waiting;
            }
            Slot::Cancelled(_) => return Polled::Gone,
            Slot::Answered(_) => {}
        }
        match slot.remove() {
            Slot::Answered(answer) => Polled::Ready(answer),
            _ => Polled::Gone,
        }
    }

    /// The caller gave up on call `id`: `Some(Ok((token, len)))` if it was waiting (tell the
    /// peer), `Some(Err(answer))` if its answer had arrived (drop it), `None` if it was not
    /// there. With `keep`, a waiting call stays in the table as cancelled, still counted in
    /// the peer's window, until the peer's last word on it ([`Pending::deliver`],
    /// [`Pending::close_cancelled`]); `len` is then 0, as nothing leaves the window yet.
    #[inline]
    pub fn cancel(&mut self, id: u64, keep: bool) -> Option<Result<(W, usize), A>> {
        let slot = self.slots.get_mut(&id)?;
        match slot {
            Slot::Waiting(_, len) if keep => {
                let len = *len;
                self.cancelled += 1;
                match std::mem::replace(slot, Slot::Cancelled(len)) {
                    Slot::Waiting(token, _) => Some(Ok((token, 0))),
                    _ => None,
                }
            }
            Slot::Cancelled(_) => None,
            _ => match self.slots.remove(&id)? {
                Slot::Waiting(token, len) => Some(Ok((token, len))),
                Slot::Answered(answer) => Some(Err(answer)),
                Slot::Cancelled(_) => None,
            },
        }
    }

    /// The peer turned out to count nothing: cancelled calls kept for its last word leave the
    /// table (it sends none).
    pub fn forget_cancelled(&mut self) {
        if self.cancelled > 0 {
            self.slots
                .retain(|_, slot| !matches!(slot, Slot::Cancelled(_)));
            self.cancelled = 0;
        }
    }

    /// The connection ended: every waiting (or cancelled) call leaves the table, each waiting
    /// one's token given to `each` first; answers that arrived stay for their callers to take.
    pub fn fail_waiting(&mut self, mut each: impl FnMut(&mut W)) {
        self.slots.retain(|_, slot| match slot {
            Slot::Waiting(token, _) => {
                each(token);
                false
            }
            Slot::Cancelled(_) => false,
            Slot::Answered(_) => true,
        });
        self.cancelled = 0;
    }
}

/// The peer's calls running here. See the [module docs](self).
pub struct Running<R> {
    /// Keyed by the peer's request ids: hashed under a secret the peer does not know.
    tracked: HashMap<u64, R, PeerKeys>,
    in_flight: usize,
}

impl<R> std::fmt::Debug for Running<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("in_flight", &self.in_flight)
            .field("tracked", &self.tracked.len())
            .finish()
    }
}

impl<R> Running<R> {
    /// An empty table hashing the peer's ids under `keys`.
    pub fn with_keys(keys: PeerKeys) -> Running<R> {
        Running {
            tracked: HashMap::with_hasher(keys),
            in_flight: 0,
        }
    }

    /// How many of the peer's calls run here now.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// A call of the peer's starts running.
    #[inline]
    pub fn admit(&mut self) {
        self.in_flight += 1;
    }

    /// Whether call `id` is tracked (a call whose handler waits).
    #[inline]
    pub fn is_tracked(&self, id: u64) -> bool {
        self.tracked.contains_key(&id)
    }

    /// Track call `id`, whose handler waits, with the driver's cancel token.
    #[inline]
    pub fn track(&mut self, id: u64, token: R) {
        self.tracked.insert(id, token);
    }

    /// The peer cancelled call `id`: its token is given back (`None` if it was not tracked).
    #[inline]
    pub fn cancel(&mut self, id: u64) -> Option<R> {
        self.tracked.remove(&id)
    }

    /// A call finished: it no longer counts, and, if it was `tracked`, whether it still was
    /// (a cancelled call is not answered).
    #[inline]
    pub fn finish(&mut self, id: u64, tracked: bool) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        !tracked || self.tracked.remove(&id).is_some()
    }

    /// The connection ended: every tracked call's token is dropped (cancelling it).
    pub fn clear(&mut self) {
        self.tracked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_is_answered_and_taken_once() {
        let mut p: Pending<&str, u32> = Pending::new();
        let id = p.next_id();
        assert_eq!(id, 1);
        p.wait(id, "w1", 5);
        let mut seen = None;
        assert_eq!(p.poll(id, |w| seen = Some(*w)), Polled::Waiting);
        assert_eq!(seen, Some("w1"));
        assert_eq!(p.poll(id, |w| *w = "w2"), Polled::Waiting);
        let mut woken = None;
        assert_eq!(p.deliver(id, 42, |w| woken = Some(w)), Ok(5));
        assert_eq!(woken, Some("w2"));
        assert_eq!(
            p.deliver(id, 43, |_| unreachable!()),
            Err((43, 0)),
            "a second answer is not taken"
        );
        assert_eq!(p.poll(id, |_| unreachable!()), Polled::Ready(42));
        assert_eq!(p.poll(id, |_| unreachable!()), Polled::Gone);
        assert!(p.is_empty());
    }

    #[test]
    fn answers_may_come_in_any_order_and_ids_are_never_reused() {
        let mut p: Pending<(), u64> = Pending::new();
        let ids: Vec<u64> = (0..3).map(|_| p.next_id()).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        for &id in &ids {
            p.wait(id, (), 0);
        }
        assert_eq!(p.deliver(3, 30, |_| ()), Ok(0));
        assert_eq!(p.deliver(1, 10, |_| ()), Ok(0));
        assert_eq!(p.poll(3, |_| ()), Polled::Ready(30));
        assert_eq!(p.poll(2, |_| ()), Polled::Waiting);
        assert_eq!(p.next_id(), 4);
        assert_eq!(p.deliver(99, 0, |_| ()), Err((0, 0)), "never made");
    }

    #[test]
    fn a_cancel_crossing_an_answer_gives_the_answer_back() {
        let mut p: Pending<&str, &str> = Pending::new();
        let (a, b) = (p.next_id(), p.next_id());
        p.wait(a, "wa", 10);
        p.wait(b, "wb", 20);
        assert_eq!(p.deliver(b, "answer", |w| assert_eq!(w, "wb")), Ok(20));
        assert_eq!(
            p.cancel(a, false),
            Some(Ok(("wa", 10))),
            "waiting: tell the peer"
        );
        assert_eq!(
            p.cancel(b, false),
            Some(Err("answer")),
            "answered: drop the answer"
        );
        assert_eq!(p.cancel(b, false), None);
        // An answer that arrives after the cancel finds nothing waiting.
        assert_eq!(p.deliver(a, "late", |_| ()), Err(("late", 0)));
    }

    #[test]
    fn a_cancelled_call_the_peer_counts_stays_until_its_last_word() {
        let mut p: Pending<&str, &str> = Pending::new();
        let (a, b, c) = (p.next_id(), p.next_id(), p.next_id());
        p.wait(a, "wa", 10);
        p.wait(b, "wb", 20);
        p.wait(c, "wc", 30);
        assert_eq!(p.cancel(a, true), Some(Ok(("wa", 0))));
        assert_eq!(p.cancel(a, true), None, "cancelled once");
        assert!(!p.is_waiting(a) && p.was_issued(a));
        assert_eq!(
            (p.len(), p.cancelled()),
            (2, 1),
            "still counted by the peer"
        );
        assert_eq!(p.poll(a, |_| unreachable!()), Polled::Gone);
        // The answer crossing the cancel is the last word: the length comes back with it.
        assert_eq!(p.deliver(a, "late", |_| unreachable!()), Err(("late", 10)));
        assert_eq!((p.len(), p.cancelled()), (2, 0));
        // Or the peer's fault, closed without delivery.
        assert_eq!(p.cancel(b, true), Some(Ok(("wb", 0))));
        assert_eq!(p.close_cancelled(b), 20);
        assert_eq!(p.close_cancelled(b), 0);
        assert_eq!(p.close_cancelled(c), 0, "waiting, not cancelled");
        // The end of the connection drops cancelled calls too.
        assert_eq!(p.cancel(c, true), Some(Ok(("wc", 0))));
        p.fail_waiting(|_| unreachable!("no call waits"));
        assert!(p.is_empty() && p.cancelled() == 0);
    }

    #[test]
    fn the_end_of_the_connection_fails_waiting_calls_and_keeps_answers() {
        let mut p: Pending<u8, u8> = Pending::new();
        for token in 0..3 {
            let id = p.next_id();
            p.wait(id, token, 0);
        }
        assert_eq!(p.deliver(2, 20, |w| assert_eq!(w, 1)), Ok(0));
        let mut failed = Vec::new();
        p.fail_waiting(|w| failed.push(*w));
        failed.sort_unstable();
        assert_eq!(failed, vec![0, 2]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.poll(1, |_| ()), Polled::Gone);
        assert_eq!(p.poll(2, |_| ()), Polled::Ready(20));
        assert!(format!("{p:?}").starts_with("Pending { len: 0"));
    }

    #[test]
    fn running_calls_are_counted_and_cancelled_ones_are_not_answered() {
        let mut r: Running<&str> = Running::with_keys(PeerKeys::new());
        r.admit();
        r.admit();
        r.track(7, "cancel-7");
        assert!(r.is_tracked(7) && !r.is_tracked(8));
        assert_eq!(r.in_flight(), 2);
        // Answered inline: never tracked, always answered.
        assert!(r.finish(8, false));
        assert_eq!(r.cancel(7), Some("cancel-7"));
        assert!(!r.finish(7, true), "cancelled: no answer");
        assert_eq!(r.in_flight(), 0);
        r.track(9, "x");
        r.clear();
        assert!(!r.is_tracked(9));
        assert!(format!("{r:?}").contains("in_flight: 0"));
    }
}
