//! Incoming dispatch: the peer's frames handed to the broker, its calls run (inline, or in a
//! task of their own when they wait), their answers queued.

use super::*;
use crate::object::CatchUnwind;

impl ConnShared {
    /// Handle one frame of a reader's batch (`held`: one the reader held back, with
    /// [`ConnShared::hold_frame`], and when it read it: a call's deadline counts from then).
    /// `events` is scratch space (kept by the reader so that waking callers allocates nothing).
    ///
    /// A call that arrives while `max_in_flight_calls` of the peer's calls run here is given
    /// back (`Some`), for the reader to hold until one ends: the peer cannot know the limit (it
    /// is not announced), so a peer within its call window is never refused for it.
    pub(super) fn handle_frame(
        self: &Arc<Self>,
        frame: Frame,
        events: &mut Vec<Event>,
        held: Option<tokio::time::Instant>,
    ) -> Result<Option<Frame>, ProtocolError> {
        if crate::message::is_answer(&frame.body) {
            // The reader gathers answers into batches; one alone is a batch of one.
            return self.handle_answers(&mut vec![frame], events).map(|_| None);
        }
        let mut broker = self.lock();
        if broker.in_flight() >= broker.limits().max_in_flight_calls
            && broker.state() == crate::broker::State::Open
            && crate::message::is_call(&frame.body)
        {
            return Ok(Some(frame));
        }
        // Calls that handlers polled inline make now leave with the reader's flush.
        broker.in_batch = true;
        // A frame yields at most one call, handed back directly.
        let result = if held.is_some() {
            broker.handle_held_frame(frame, &mut self.make_import())
        } else {
            broker.handle_frame(frame, &mut self.make_import())
        };
        broker.poll_events(events);
        let queued = broker.queued_bytes();
        // A graceful close waits for held frames too (see `ConnShared::close_gracefully`).
        let unheld_while_draining =
            held.is_some() && broker.state() == crate::broker::State::Draining;
        drop(broker);
        if unheld_while_draining {
            self.call_done.notify_waiters();
        }
        // Outside our lock: callers whose answers arrived (they run once the reader yields),
        // revocations, which reach into other connections, hooks.
        if !events.is_empty() {
            self.act(events);
        }
        let result = result.map(|call| {
            if let Some(ev) = call {
                self.spawn_call(ev, held);
            }
            None
        });
        // Answers given inline count at once, so a batch of calls cannot queue without bound.
        self.note_queued(queued);
        // No writer wake-up: the reader flushes once it has handled every frame it has.
        result
    }

    /// The reader holds `frame` back while the output is congested: a call counts in our call
    /// window from now on, or is refused at once if it does not fit (see
    /// [`Broker::hold_frame`]). Returns whether to hold it.
    pub(super) fn hold_frame(&self, frame: &Frame) -> Result<bool, ProtocolError> {
        self.lock().hold_frame(frame)
    }

    /// The peer cancelled call `frame`, which the reader held back: it never runs (see
    /// [`Broker::drop_held_call`]).
    pub(super) fn drop_held_call(&self, frame: &Frame) -> Result<(), ProtocolError> {
        let (result, draining) = self.with_broker(|broker| {
            let result = broker.drop_held_call(frame);
            (result, broker.state() == crate::broker::State::Draining)
        });
        // A graceful close waits for held frames too (see `ConnShared::close_gracefully`).
        if draining {
            self.call_done.notify_waiters();
        }
        result
    }

    /// Whether frame `body`, which may overtake held frames, must wait behind them (see
    /// [`Broker::must_follow_held`]): only revocations and cache updates may have to.
    pub(super) fn must_follow_held(&self, body: &[u8]) -> bool {
        crate::message::object_of(body).is_some() && self.lock().must_follow_held(body)
    }

    /// Handle answers and faults for our calls that arrived together (`answers`, emptied), under
    /// one acquisition of the broker's lock: their callers are woken once it is released; no
    /// handler runs. Returns whether output was queued: calls of ours that waited for room in
    /// the peer's call window, which the answers made.
    pub(super) fn handle_answers(
        self: &Arc<Self>,
        answers: &mut Vec<Frame>,
        events: &mut Vec<Event>,
    ) -> Result<bool, ProtocolError> {
        let mut calls = Vec::new();
        let (result, queued) = {
            let mut broker = self.lock();
            let before = broker.queued_bytes();
            let mut result = Ok(());
            for frame in answers.drain(..) {
                match broker.handle_frame(frame, &mut self.make_import()) {
                    // Answers and faults carry no call to run; were one to, it runs as any
                    // other.
                    Ok(call) => calls.extend(call),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            broker.poll_events(events);
            (result, broker.queued_bytes() > before)
        };
        // The callers are woken; answers nobody waits for any more are dropped here, outside
        // the lock.
        self.act(events);
        for call in calls {
            self.spawn_call(call, None);
        }
        result.map(|()| queued)
    }

    /// Run call `ev`, read just now, or at `read_at` if it was held back: its deadline (the
    /// time its caller had left as it sent it) counts from when it was read.
    pub(super) fn spawn_call(
        self: &Arc<Self>,
        ev: CallEvent,
        read_at: Option<tokio::time::Instant>,
    ) {
        let CallEvent {
            id,
            target,
            object,
            body,
            method,
            args_at,
            refs,
            answer,
            deadline_ms,
            extras,
            charge,
            tail,
        } = ev;
        let span = tracing::debug_span!(
            "pb.call",
            direction = "in",
            connection = self.id,
            peer = tracing::field::Empty,
            request_id = id,
            object = target,
            method =
                std::str::from_utf8(body.get(method.clone()).unwrap_or_default()).unwrap_or(""),
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = (!span.is_disabled()).then(|| {
            if let Some(addr) = self.peer_addr {
                span.record("peer", tracing::field::display(addr));
            }
            std::time::Instant::now()
        });
        if let Some(parent) = extras.trace {
            // The caller's span is this one's parent.
            crate::trace::incoming(&span, parent);
        }
        let deadline = deadline_ms.map(|ms| {
            let ms = Duration::from_millis(ms);
            match read_at {
                Some(at) => crate::deadline::after_from(at, ms),
                None => crate::deadline::after(ms),
            }
        });
        let caller = Caller::remote(self.clone(), deadline);
        let call = IncomingCall {
            body,
            method: MethodName::InBody(method),
            args_at,
            tail,
            tail_taken: false,
            refs,
            caller,
            extras,
            jelly: None,
        };
        // Making the handler runs user code too (decoding the arguments): caught as its polls
        // are, it fails this call alone.
        let mut fut = CatchUnwind::dispatch(|| object.into_dispatch(call));
        // Without a deadline, poll the handler once right here: most answer without waiting,
        // and then the call costs no task, no wake-up, no cancellation channel and no running
        // entry, and its answer leaves with the reader's next flush. A handler that must wait
        // continues in a task of its own, which polls it again at once (so the no-op waker of
        // this first poll is never relied upon).
        if deadline.is_none() {
            let polled = {
                let _entered = span.enter();
                Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop()))
            };
            if let Poll::Ready(reply) = polled {
                if let Some(started) = started {
                    span.record("outcome", outcome_name(Some(&reply)));
                    span.record("duration_us", started.elapsed().as_micros() as u64);
                }
                self.finish(id, answer, Some(reply), (false, charge));
                return;
            }
        }
        // The handler waits: it continues in a task of its own.
        let conn = self.clone();
        let cancel = if answer {
            // Fires (or is dropped) when the peer cancels the call, or the connection ends.
            let (watch, cancel) = tokio::sync::oneshot::channel();
            if conn.lock().watch(id, watch).is_err() {
                // Closed meanwhile: drop the handler.
                fut.drop_caught();
                conn.finish(id, answer, None, (false, charge));
                return;
            }
            Some(cancel)
        } else {
            None
        };
        // The handler runs under its caller's deadline (its own calls inherit it) and is
        // dropped when the deadline passes: the caller has given up by then. That wrapping
        // (a timer and a scope) is boxed, so that the task of a handler without a deadline
        // stays small: tokio copies the whole future into the task when it is spawned.
        let CatchUnwind(handler) = fut;
        let fut = CatchUnwind(match deadline {
            Some(d) => Box::pin(crate::deadline::maybe_scope(Some(d), async move {
                tokio::time::timeout_at(d, handler)
                    .await
                    .unwrap_or_else(|_| Err(deadline_fault()))
            })) as BoxFuture<Reply>,
            None => handler,
        });
        tokio::spawn(
            async move {
                let mut fut = fut;
                let reply = match cancel {
                    Some(mut cancelled) => tokio::select! {
                        biased;
                        r = &mut fut => Some(r),
                        _ = &mut cancelled => None,
                    },
                    // A one-way call is not watched in the running table (its caller waits
                    // for no answer, and cancels nothing), but it is cancelled when the
                    // connection ends, as every running handler is. Only handlers that wait
                    // pay for that wait.
                    None => tokio::select! {
                        biased;
                        r = &mut fut => Some(r),
                        () = conn.closed() => None,
                    },
                };
                // Dropped here, not by the `select!`: a panic in the drop of a cancelled
                // handler is caught, and the call still ends.
                fut.drop_caught();
                if let Some(started) = started {
                    let span = tracing::Span::current();
                    span.record("outcome", outcome_name(reply.as_ref()));
                    span.record("duration_us", started.elapsed().as_micros() as u64);
                }
                conn.finish(id, answer, reply, (answer, charge));
                conn.wake_writer.notify_one();
            }
            .instrument(span),
        );
    }

    /// Book the end of incoming call `id` and queue its answer (`None`: cancelled). `tracked`:
    /// the call ran in a task of its own and is in the broker's running table; `charge`: what
    /// it counted in our call window.
    pub(super) fn finish(
        &self,
        id: u64,
        answer: bool,
        reply: Option<Reply>,
        tracked: (bool, usize),
    ) {
        if let Some(Err(f)) = &reply
            && !answer
        {
            tracing::debug!(id, message = %f.message, "one-way call failed");
        }
        // What the answer exported and released is acted on outside the lock.
        let draining = self.with_broker(|broker| {
            broker.finish_call(id, answer, reply, tracked);
            broker.state() != crate::broker::State::Open
        });
        // Only a graceful close waits for running calls, and it starts by draining.
        if draining {
            self.call_done.notify_waiters();
        }
        // A call held back at the cap on running calls may run now.
        if self.holding.load(Ordering::Acquire) {
            self.drained.notify_one();
        }
    }
}
