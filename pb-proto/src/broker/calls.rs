//! Our calls (started, answered, polled, cancelled) and the peer's calls (watched for cancel,
//! finished into answers or faults).

use super::*;

impl<T: Tokens> Broker<T> {
    /// Start a call to the peer's object `target`, with the references `refs` (the
    /// arguments point into them by index). With a waiter an answer is wanted: it is kept for
    /// [`Broker::poll_answer`], and an [`Event::Answered`] gives the waiter back when it
    /// arrives. `deadline_ms` is how long the caller will wait.
    ///
    /// Refused, changing nothing, when the connection is closing or closed, or when the call
    /// would exceed a limit of ours or the peer's (then the fault names the limit).
    pub fn start_call(
        &mut self,
        target: u64,
        method: &str,
        payload: impl Payload,
        refs: &[T::Object],
        (waiter, deadline_ms, extras): (Option<T::Waiter>, Option<u64>, CallExtras),
    ) -> Result<u64, Fault> {
        if self.state == State::Closed {
            return Err(self.close_fault());
        }
        if self.peer_goodbye || self.state == State::Draining {
            return Err(Fault {
                kind: FaultKind::ShuttingDown,
                message: "the connection is shutting down".into(),
            });
        }
        if method.len() > message::MAX_METHOD_LEN {
            return Err(Fault::limit(format!(
                "method name longer than {} bytes",
                message::MAX_METHOD_LEN
            )));
        }
        if waiter.is_some() && self.pending.len() >= self.limits.max_pending_calls {
            return Err(Fault::limit(format!(
                "too many calls awaiting answers (limit max_pending_calls = {})",
                self.limits.max_pending_calls
            )));
        }
        // Checked before anything is exported: a refused call changes no count.
        self.refs_fit(refs.len(), PEER)?;
        self.frame_fits(
            call_len_max(method.len(), payload.as_slice().len(), refs.len()),
            PEER,
        )?;
        let descs = self.describe(refs)?;
        let id = self.pending.next_id();
        self.out
            .reserve_frame(57 + method.len() + descs.len() * 11, payload.as_slice());
        encode_call_frame_head(
            self.out.buf(),
            payload.as_slice().len(),
            id,
            target,
            method.as_bytes(),
            (waiter.is_some(), deadline_ms, &extras),
            &descs,
        );
        if payload.as_slice().len() < ZERO_COPY_MIN {
            // Copied straight from the caller's buffer: no allocation of its own.
            self.out.buf().put_slice(payload.as_slice());
        } else {
            self.out.append_payload(payload.into_bytes());
        }
        if let Some(w) = waiter {
            self.pending.wait(id, Some(w));
        }
        Ok(id)
    }

    /// Hand the answer of call `id` to its caller. `Err` gives the reply back if the call is
    /// not waiting (cancelled, already answered, or never made).
    pub(super) fn deliver(
        &mut self,
        id: u64,
        reply: Reply<T::Object>,
    ) -> Result<(), Reply<T::Object>> {
        let events = &mut self.events;
        self.pending.deliver(id, reply, |waiter| {
            events.extend(waiter.map(Event::Answered));
        })
    }

    /// What a call fails with once the connection is closed.
    pub(super) fn close_fault(&self) -> Fault {
        self.close_fault.clone().unwrap_or_else(Fault::disconnected)
    }

    /// The caller of call `id` polls for its answer: `Ready` takes it out of the table;
    /// `Pending` leaves the call waiting, after `refresh` saw (and may replace) the waiter it
    /// keeps. A call no longer in the table was failed by the connection's end.
    pub fn poll_answer(
        &mut self,
        id: u64,
        refresh: impl FnOnce(&mut Option<T::Waiter>),
    ) -> Poll<Reply<T::Object>> {
        // One lookup whether the answer is there or not.
        match self.pending.poll(id, refresh) {
            Polled::Ready(reply) => Poll::Ready(reply),
            Polled::Waiting => Poll::Pending,
            Polled::Gone => Poll::Ready(Err(self.close_fault())),
        }
    }

    /// Our caller gave up on call `id`: the peer is told (a cancel). Returns its answer if one
    /// had arrived meanwhile, for the caller to drop (it may hold references).
    pub fn cancel_call(&mut self, id: u64) -> Option<Reply<T::Object>> {
        match self.pending.cancel(id)? {
            Ok(_waiting) => {
                if self.state != State::Closed {
                    self.write_message(&Message::Cancel { id });
                }
                None
            }
            Err(answered) => Some(answered),
        }
    }

    /// The handler of the peer's call `id` has to wait: enter it in the running table, with
    /// the watch that an [`Event::Cancelled`] gives back if the peer cancels it. Returns the
    /// watch back if the connection is closed (the call is over). Only handlers that wait are
    /// entered, so a call answered at once costs no entry.
    pub fn watch(&mut self, id: u64, watch: T::Watch) -> Result<(), T::Watch> {
        if self.state == State::Closed {
            return Err(watch);
        }
        self.running.track(id, watch);
        Ok(())
    }

    /// One of the peer's calls finished: its reply is sent unless it was cancelled, wanted
    /// none, or is `None` (the handler was dropped).
    ///
    /// `tracked`: the call was entered in the running table (by [`Broker::watch`]) and is
    /// answered only if still there; a call answered inline, before any other frame was
    /// handled, was never entered and cannot have been cancelled.
    pub fn finish_call(
        &mut self,
        id: u64,
        answer: bool,
        reply: Option<Reply<T::Object>>,
        tracked: bool,
    ) {
        // A tracked call no longer tracked was cancelled by the peer: no answer.
        let still_wanted = self.running.finish(id, tracked);
        if !answer || self.state == State::Closed || !still_wanted {
            self.bury(reply.into_iter().flatten().flat_map(|o| o.refs));
            return;
        }
        let reply = match reply {
            None => return,
            // Most answers carry no references: no export bookkeeping, and the frame's length
            // goes out with the envelope.
            Some(Ok(o)) if o.refs.is_empty() => {
                match self.frame_fits(ANSWER_HEAD_MAX + o.payload.len(), CALLER) {
                    Ok(()) => {
                        self.out.reserve_frame(16, &o.payload);
                        encode_answer_frame_head(self.out.buf(), id, o.ok, o.payload.len());
                        self.out.append_payload(o.payload);
                    }
                    Err(f) => self.send_fault(id, f),
                }
                return;
            }
            Some(reply) => reply,
        };
        let outcome = reply.and_then(|o| {
            // Checked before anything is exported: a refused answer changes no count.
            let len = ANSWER_HEAD_MAX + o.refs.len() * REF_DESC_MAX + o.payload.len();
            let described = self
                .refs_fit(o.refs.len(), CALLER)
                .and_then(|()| self.frame_fits(len, CALLER))
                .and_then(|()| self.describe(&o.refs));
            // The references are exported now (or refused): the driver drops them.
            self.bury(o.refs);
            Ok((o.ok, described?, o.payload))
        });
        match outcome {
            Ok((ok, descs, payload)) => {
                self.out.reserve_frame(16 + descs.len() * 11, &payload);
                let start = self.out.begin_frame();
                encode_answer_head(self.out.buf(), id, ok, &descs);
                self.out.push_payload(start, payload);
            }
            Err(f) => self.send_fault(id, f),
        }
    }
}
