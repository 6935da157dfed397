//! What the connection's handles ask of its driver, and where our calls wait for their answers:
//! one lock shared by the handles and the driver, no channel and no allocation per call.
//!
//! A call takes a slot, which holds the calling task's waker from the moment the call is
//! queued; the driver takes every queued request at once, and leaves each answer in its slot,
//! all the answers of a read under one acquisition of the lock, waking the callers after
//! releasing it. A slot's life:
//!
//! ```text
//! Waiting ──answer, or the connection ends──▶ Done ──taken by the caller──▶ Free
//!    └──caller gone──▶ Abandoned ──answer, or the connection ends──▶ Free
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::sync::{Notify, oneshot};

use super::codec::AmpBox;
use super::command::AmpCallError;
use super::dispatch::DisconnectReason;
use super::driver::RawResult;

/// How many requests may wait for the driver; past it, callers wait for room.
pub(super) const REQUEST_QUEUE: usize = 64;

/// A request of a handle to the driver.
pub(super) enum Request {
    /// A call: its answer goes to slot `slot`.
    Ask {
        name: Bytes,
        args: AmpBox,
        slot: usize,
    },
    Tell {
        name: Bytes,
        args: AmpBox,
        reply: oneshot::Sender<RawResult<()>>,
    },
    StartTls {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        reply: oneshot::Sender<RawResult<()>>,
    },
    Close,
}

/// Where one call of ours waits for its answer.
enum Slot {
    Free,
    /// With the caller's waker.
    Waiting(Waker),
    Done(RawResult<AmpBox>),
    /// The caller went away; the answer is dropped when it comes.
    Abandoned,
}

/// The state behind the lock.
struct State {
    queue: Vec<Request>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Why the connection ended, once it has: requests are refused from then on.
    closed: Option<DisconnectReason>,
    /// A close is queued (one is enough).
    close_queued: bool,
    /// Handles alive: when none is left and nothing is queued, nobody can call any more.
    handles: usize,
    /// A caller found the queue full and waits on [`Calls::room`].
    room_wanted: bool,
}

/// The calls and requests of one connection, shared by its handles and its driver.
pub(super) struct Calls {
    state: Mutex<State>,
    /// The driver's task, left by its last wait for a wake-up ([`Calls::poll_woken`]), woken
    /// when something was queued or the last handle went. A slot rather than a `Notify`: the
    /// driver waits on it at every turn of its loop, and leaving a waker that is already there
    /// costs a comparison, not a future made and dropped.
    driver: Mutex<Option<Waker>>,
    /// Set by a wake-up of the driver, cleared by the driver before it takes the queue: while
    /// it is set, the driver will see whatever is queued now, so more wake-ups cost nothing
    /// (most of the callers that queue calls in one scheduler tick).
    woken: AtomicBool,
    /// Wakes callers that found the queue full.
    room: Notify,
}

/// Why a request was not queued.
#[derive(Debug)]
pub(super) enum NotQueued {
    Full,
    Closed(DisconnectReason),
}

impl Calls {
    /// Shared state for a new connection, with one handle.
    pub(super) fn new() -> Arc<Calls> {
        Arc::new(Calls {
            state: Mutex::new(State {
                queue: Vec::new(),
                slots: Vec::new(),
                free: Vec::new(),
                closed: None,
                close_queued: false,
                handles: 1,
                room_wanted: false,
            }),
            driver: Mutex::new(None),
            woken: AtomicBool::new(false),
            room: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock panics midway; a poisoned lock holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the driver unless a wake-up it has not acted on is pending.
    fn wake_driver(&self) {
        // Sequentially consistent with the driver's check in `poll_woken`: either the driver
        // sees the flag, or this sees the waker the driver left before it looked.
        if !self.woken.swap(true, Ordering::SeqCst) {
            let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(driver) = driver {
                driver.wake();
            }
        }
    }

    // ---- the handles' side -------------------------------------------------------------------

    /// One more handle.
    pub(super) fn add_handle(&self) {
        self.lock().handles += 1;
    }

    /// One handle fewer; the driver hears of the last one.
    pub(super) fn drop_handle(&self) {
        let last = {
            let mut state = self.lock();
            state.handles = state.handles.saturating_sub(1);
            state.handles == 0
        };
        if last {
            self.wake_driver();
        }
    }

    /// Queues call `name(args)`, its slot holding `waker`; returns the slot. `call` is taken
    /// only if the call is queued.
    pub(super) fn try_ask(
        &self,
        call: &mut Option<(Bytes, AmpBox)>,
        waker: &Waker,
    ) -> Result<usize, NotQueued> {
        let slot = {
            let mut state = self.lock();
            state.check_room()?;
            let Some((name, args)) = call.take() else {
                return Err(NotQueued::Closed(DisconnectReason::LocalClosed));
            };
            let slot = state.take_slot(waker.clone());
            state.queue.push(Request::Ask { name, args, slot });
            slot
        };
        self.wake_driver();
        Ok(slot)
    }

    /// Queues `request` (not a call); `request` is taken only if it is queued.
    pub(super) fn try_request(&self, request: &mut Option<Request>) -> Result<(), NotQueued> {
        {
            let mut state = self.lock();
            state.check_room()?;
            if let Some(request) = request.take() {
                state.queue.push(request);
            }
        }
        self.wake_driver();
        Ok(())
    }

    /// Queues a close after what is queued, even when the queue is full.
    pub(super) fn request_close(&self) {
        {
            let mut state = self.lock();
            if state.closed.is_some() || std::mem::replace(&mut state.close_queued, true) {
                return;
            }
            state.queue.push(Request::Close);
        }
        self.wake_driver();
    }

    /// Waits until the queue may have room, or the connection has ended.
    pub(super) async fn room(&self) {
        let notified = self.room.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut state = self.lock();
            if state.closed.is_some() || state.queue.len() < REQUEST_QUEUE {
                return;
            }
            state.room_wanted = true;
        }
        notified.await;
    }

    /// The answer in `slot`, once it is there.
    pub(super) fn poll_answer(&self, slot: usize, cx: &mut Context<'_>) -> Poll<RawResult<AmpBox>> {
        let mut state = self.lock();
        let state = &mut *state;
        // Not ours (only a bug gets here): the caller hears of it as a close.
        let lost = || {
            Poll::Ready(Err(AmpCallError::Disconnected(
                DisconnectReason::LocalClosed,
            )))
        };
        let Some(s) = state.slots.get_mut(slot) else {
            return lost();
        };
        match std::mem::replace(s, Slot::Free) {
            Slot::Waiting(mut waker) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                *s = Slot::Waiting(waker);
                Poll::Pending
            }
            Slot::Done(result) => {
                state.free.push(slot);
                Poll::Ready(result)
            }
            other @ (Slot::Free | Slot::Abandoned) => {
                *s = other;
                lost()
            }
        }
    }

    /// The caller of `slot` went away before taking its answer.
    pub(super) fn abandon(&self, slot: usize) {
        let unwanted = {
            let mut state = self.lock();
            let state = &mut *state;
            match state.slots.get_mut(slot) {
                Some(s @ Slot::Waiting(_)) => {
                    *s = Slot::Abandoned;
                    None
                }
                Some(s @ Slot::Done(_)) => {
                    state.free.push(slot);
                    Some(std::mem::replace(s, Slot::Free))
                }
                _ => None,
            }
        };
        // An answer nobody took is dropped outside the lock.
        drop(unwanted);
    }

    // ---- the driver's side -------------------------------------------------------------------

    /// Ready once the driver was woken (something was queued, or the last handle went) and
    /// has not taken the queue since; otherwise leaves the driver's waker to be woken.
    pub(super) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        {
            let mut driver = self.driver.lock().unwrap_or_else(|p| p.into_inner());
            if !driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *driver = Some(cx.waker().clone());
            }
        }
        if self.woken.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Moves what is queued into `batch` (empty) and returns whether anybody can still call
    /// (a handle is alive or something was queued); `None`, without taking the lock, when
    /// nothing happened since the last time (every change wakes the driver).
    pub(super) fn take_queue(&self, batch: &mut Vec<Request>) -> Option<bool> {
        if !self.woken.load(Ordering::Acquire) {
            return None;
        }
        // Cleared before the queue is taken: whoever queues after this wakes the driver again.
        self.woken.store(false, Ordering::Release);
        let (open, room_wanted) = {
            let mut state = self.lock();
            std::mem::swap(&mut state.queue, batch);
            (
                state.handles > 0 || !batch.is_empty(),
                std::mem::take(&mut state.room_wanted),
            )
        };
        if room_wanted && !batch.is_empty() {
            self.room.notify_waiters();
        }
        Some(open)
    }

    /// Puts requests the driver could not take yet back at the front of the queue, to be
    /// taken the next time it takes the queue.
    pub(super) fn put_back(&self, rest: &mut Vec<Request>) {
        {
            let mut state = self.lock();
            rest.append(&mut state.queue);
            std::mem::swap(&mut state.queue, rest);
        }
        self.woken.store(true, Ordering::Release);
    }

    /// Leaves each answer in its slot, under one acquisition of the lock, and wakes the
    /// callers after releasing it. `answers` is left empty; `wakers` is scratch room.
    pub(super) fn deliver(
        &self,
        answers: &mut Vec<(usize, RawResult<AmpBox>)>,
        wakers: &mut Vec<Waker>,
    ) {
        if answers.is_empty() {
            return;
        }
        let mut unwanted = Vec::new();
        {
            let mut state = self.lock();
            let state = &mut *state;
            for (slot, result) in answers.drain(..) {
                match state.slots.get_mut(slot) {
                    Some(s @ Slot::Waiting(_)) => {
                        if let Slot::Waiting(waker) = std::mem::replace(s, Slot::Done(result)) {
                            wakers.push(waker);
                        }
                    }
                    Some(s @ Slot::Abandoned) => {
                        *s = Slot::Free;
                        state.free.push(slot);
                        unwanted.push(result);
                    }
                    _ => unwanted.push(result),
                }
            }
        }
        drop(unwanted);
        for waker in wakers.drain(..) {
            waker.wake();
        }
    }

    /// The connection has ended: every call waiting, queued or not, fails with `reason`, and
    /// so does every request queued and any made later. Returns the requests that were queued
    /// (other than calls), for the driver to answer.
    pub(super) fn shut(&self, reason: &DisconnectReason) -> Vec<Request> {
        let mut wakers = Vec::new();
        let queued = {
            let mut state = self.lock();
            let state = &mut *state;
            if state.closed.is_some() {
                return Vec::new();
            }
            state.closed = Some(reason.clone());
            for (i, s) in state.slots.iter_mut().enumerate() {
                match s {
                    Slot::Waiting(_) => {
                        let failed = Slot::Done(Err(AmpCallError::Disconnected(reason.clone())));
                        if let Slot::Waiting(waker) = std::mem::replace(s, failed) {
                            wakers.push(waker);
                        }
                    }
                    Slot::Abandoned => {
                        *s = Slot::Free;
                        state.free.push(i);
                    }
                    Slot::Free | Slot::Done(_) => {}
                }
            }
            std::mem::take(&mut state.queue)
        };
        let others = queued
            .into_iter()
            .filter(|r| !matches!(r, Request::Ask { .. }))
            .collect();
        for waker in wakers {
            waker.wake();
        }
        self.room.notify_waiters();
        others
    }
}

impl State {
    /// Whether a request may be queued now.
    fn check_room(&mut self) -> Result<(), NotQueued> {
        if let Some(reason) = &self.closed {
            return Err(NotQueued::Closed(reason.clone()));
        }
        if self.queue.len() >= REQUEST_QUEUE {
            self.room_wanted = true;
            return Err(NotQueued::Full);
        }
        Ok(())
    }

    fn take_slot(&mut self, waker: Waker) -> usize {
        match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = Slot::Waiting(waker);
                }
                i
            }
            None => {
                self.slots.push(Slot::Waiting(waker));
                self.slots.len() - 1
            }
        }
    }
}

/// A call's claim on its slot: abandons it if dropped before the answer was taken.
pub(super) struct SlotGuard<'a> {
    pub(super) calls: &'a Calls,
    pub(super) slot: Option<usize>,
}

impl SlotGuard<'_> {
    pub(super) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<RawResult<AmpBox>> {
        let Some(slot) = self.slot else {
            return Poll::Ready(Err(AmpCallError::Disconnected(
                DisconnectReason::LocalClosed,
            )));
        };
        let answer = self.calls.poll_answer(slot, cx);
        if answer.is_ready() {
            self.slot = None;
        }
        answer
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.calls.abandon(slot);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    fn ask(calls: &Calls, waker: &Waker) -> Result<usize, NotQueued> {
        calls.try_ask(&mut Some((Bytes::from("X"), AmpBox::new())), waker)
    }

    fn answer(n: &'static str) -> RawResult<AmpBox> {
        Ok(AmpBox::from_iter([("n", n)]))
    }

    #[test]
    fn an_answer_wakes_its_caller_once_and_is_taken_once() {
        let calls = Calls::new();
        let (count, w) = waker();
        let slot = ask(&calls, &w).unwrap();
        let mut batch = Vec::new();
        assert_eq!(calls.take_queue(&mut batch), Some(true));
        assert!(matches!(batch.as_slice(), [Request::Ask { slot: s, .. }] if *s == slot));
        // Nothing new since: the lock is not even taken.
        assert_eq!(calls.take_queue(&mut Vec::new()), None);
        let mut cx = Context::from_waker(&w);
        assert!(calls.poll_answer(slot, &mut cx).is_pending());
        calls.deliver(&mut vec![(slot, answer("1"))], &mut Vec::new());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(calls.poll_answer(slot, &mut cx), Poll::Ready(answer("1")));
        // The slot is free again, and the next call takes it.
        assert_eq!(ask(&calls, &w).ok(), Some(slot));
    }

    #[test]
    fn the_driver_is_woken_once_for_what_was_queued_until_it_takes_the_queue() {
        let calls = Calls::new();
        let (driver, d) = waker();
        let (_, caller) = waker();
        let mut cx = Context::from_waker(&d);
        // Nothing queued: the driver's waker is left in the slot, once however often it polls.
        assert!(calls.poll_woken(&mut cx).is_pending());
        assert!(calls.poll_woken(&mut cx).is_pending());
        assert_eq!(
            Arc::strong_count(&driver),
            3,
            "one waker kept, not one per poll"
        );
        // A call queued wakes it once; more calls before it takes the queue wake nobody.
        ask(&calls, &caller).unwrap();
        ask(&calls, &caller).unwrap();
        assert_eq!(driver.0.load(Ordering::Relaxed), 1);
        assert!(calls.poll_woken(&mut cx).is_ready());
        let mut batch = Vec::new();
        assert_eq!(calls.take_queue(&mut batch), Some(true));
        assert_eq!(batch.len(), 2);
        // Taken: waiting again, and woken by the next call (a wake-up that came before the
        // driver looked is not lost either).
        assert!(calls.poll_woken(&mut cx).is_pending());
        ask(&calls, &caller).unwrap();
        assert_eq!(driver.0.load(Ordering::Relaxed), 2);
        batch.clear();
        assert_eq!(calls.take_queue(&mut batch), Some(true));
        ask(&calls, &caller).unwrap();
        assert!(calls.poll_woken(&mut cx).is_ready());
        // The last handle gone wakes it too.
        batch.clear();
        assert_eq!(calls.take_queue(&mut batch), Some(true));
        assert!(calls.poll_woken(&mut cx).is_pending());
        calls.drop_handle();
        assert_eq!(driver.0.load(Ordering::Relaxed), 3);
        assert!(calls.poll_woken(&mut cx).is_ready());
        batch.clear();
        assert_eq!(calls.take_queue(&mut batch), Some(false));
    }

    #[test]
    fn an_abandoned_call_frees_its_slot_when_its_answer_comes() {
        let calls = Calls::new();
        let (_, w) = waker();
        let mut guard = SlotGuard {
            calls: &calls,
            slot: Some(ask(&calls, &w).unwrap()),
        };
        let slot = guard.slot.unwrap();
        assert!(guard.poll_answer(&mut Context::from_waker(&w)).is_pending());
        drop(guard);
        let (_, other) = waker();
        let busy = ask(&calls, &other).unwrap();
        assert_ne!(
            busy, slot,
            "an abandoned slot stays taken until its answer comes"
        );
        calls.deliver(&mut vec![(slot, answer("late"))], &mut Vec::new());
        assert_eq!(ask(&calls, &other).ok(), Some(slot));
        // A caller gone after its answer came frees the slot at once.
        calls.deliver(&mut vec![(busy, answer("2"))], &mut Vec::new());
        calls.abandon(busy);
        assert_eq!(ask(&calls, &other).ok(), Some(busy));
    }

    #[test]
    fn a_full_queue_makes_callers_wait_for_room() {
        let calls = Calls::new();
        let (_, w) = waker();
        for _ in 0..REQUEST_QUEUE {
            ask(&calls, &w).unwrap();
        }
        assert!(matches!(ask(&calls, &w), Err(NotQueued::Full)));
        let mut request = Some(Request::Close);
        assert!(matches!(
            calls.try_request(&mut request),
            Err(NotQueued::Full)
        ));
        assert!(
            request.is_some(),
            "a request not queued is left to its caller"
        );
        // A close is queued all the same, once.
        calls.request_close();
        calls.request_close();
        let mut room = std::pin::pin!(calls.room());
        let mut cx = Context::from_waker(&w);
        assert!(room.as_mut().poll(&mut cx).is_pending());
        let mut batch = Vec::new();
        assert_eq!(calls.take_queue(&mut batch), Some(true));
        assert_eq!(batch.len(), REQUEST_QUEUE + 1);
        assert!(room.as_mut().poll(&mut cx).is_ready());
        // What the driver cannot take yet goes back ahead of what is newer.
        ask(&calls, &w).unwrap();
        let mut rest = batch.split_off(REQUEST_QUEUE);
        calls.put_back(&mut rest);
        let mut again = Vec::new();
        assert_eq!(calls.take_queue(&mut again), Some(true));
        assert!(matches!(
            again.as_slice(),
            [Request::Close, Request::Ask { .. }]
        ));
    }

    #[test]
    fn shutting_fails_every_call_and_every_later_request() {
        let calls = Calls::new();
        let (count, w) = waker();
        let taken = ask(&calls, &w).unwrap();
        let mut batch = Vec::new();
        calls.take_queue(&mut batch);
        let queued = ask(&calls, &w).unwrap();
        let (reply, _rx) = oneshot::channel();
        calls
            .try_request(&mut Some(Request::Tell {
                name: Bytes::from("T"),
                args: AmpBox::new(),
                reply,
            }))
            .ok()
            .unwrap();
        let reason = DisconnectReason::PeerClosed;
        let others = calls.shut(&reason);
        assert!(matches!(others.as_slice(), [Request::Tell { .. }]));
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        let mut cx = Context::from_waker(&w);
        for slot in [taken, queued] {
            assert_eq!(
                calls.poll_answer(slot, &mut cx),
                Poll::Ready(Err(AmpCallError::Disconnected(reason.clone())))
            );
        }
        assert!(matches!(ask(&calls, &w), Err(NotQueued::Closed(r)) if r == reason));
        // Only the first end counts.
        assert!(calls.shut(&DisconnectReason::LocalClosed).is_empty());
    }

    #[test]
    fn the_driver_hears_when_the_last_handle_goes() {
        let calls = Calls::new();
        calls.add_handle();
        calls.drop_handle();
        assert_eq!(calls.take_queue(&mut Vec::new()), None);
        calls.drop_handle();
        assert_eq!(calls.take_queue(&mut Vec::new()), Some(false));
    }
}
