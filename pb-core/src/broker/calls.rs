//! Our calls (started, answered, polled, cancelled) and the peer's calls (watched for cancel,
//! finished into answers or faults).

use super::*;

impl Broker {
    /// Start a call to the peer's object `target`. With a waker, an answer is wanted: it is
    /// kept in the pending table for [`Broker::poll_answer`], and the waker woken when it
    /// arrives.
    pub(crate) fn start_call(
        &mut self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: &[ObjectRef],
        (waker, deadline_ms): (Option<Waker>, Option<u64>),
    ) -> Result<u64, Fault> {
        if self.state == State::Closed {
            return Err(self.close_fault.clone().unwrap_or_else(disconnected_fault));
        }
        if self.peer_goodbye || self.state == State::Draining {
            return Err(Fault {
                kind: FaultKind::ShuttingDown,
                message: "the connection is shutting down".into(),
            });
        }
        if method.len() > message::MAX_METHOD_LEN {
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message: format!("method name longer than {} bytes", message::MAX_METHOD_LEN),
            });
        }
        if waker.is_some() && self.pending.len() >= self.limits.max_pending_calls {
            return Err(Fault {
                kind: FaultKind::LimitExceeded,
                message: format!(
                    "too many calls awaiting answers (limit max_pending_calls = {})",
                    self.limits.max_pending_calls
                ),
            });
        }
        // Checked before anything is exported: a refused call changes no count.
        self.refs_fit(refs.len(), PEER)?;
        self.frame_fits(
            call_len_max(method.len(), payload.as_slice().len(), refs.len()),
            PEER,
        )?;
        let (descs, follow) = self.describe(refs)?;
        let id = self.pending.next_id();
        self.reserve_frame(24 + method.len() + descs.len() * 11, payload.as_slice());
        encode_call_frame_head(
            self.out.buf(),
            payload.as_slice().len(),
            id,
            target,
            method.as_bytes(),
            (waker.is_some(), deadline_ms),
            &descs,
        );
        match payload {
            // Copied straight from the scratch buffer: no allocation of its own.
            Payload::Encoded(e) if e.as_slice().len() < ZERO_COPY_MIN => {
                self.out.buf().put_slice(e.as_slice());
            }
            payload => self.out.append_payload(payload.into_bytes()),
        }
        if !follow.is_empty() {
            self.write_updates(follow);
        }
        if let Some(w) = waker {
            self.pending.wait(id, Some(w));
        }
        Ok(id)
    }

    /// Who should write the call a caller just queued: the caller itself when it is the only
    /// call awaiting an answer (a sequential caller: writing at once saves the hop through the
    /// writer task). With other calls pending, more calls are likely on their way in the same
    /// scheduler tick (callers woken by one batch of answers, or a task starting several), and
    /// the writer task, which runs after them, writes them all at once. During a reader's
    /// batch, the reader flushes when the batch is done.
    pub(crate) fn who_flushes(&self) -> Flush {
        if self.in_batch {
            Flush::Reader
        } else if self.pending.len() <= 1 {
            Flush::Caller
        } else {
            Flush::Writer
        }
    }

    /// Hand the answer of call `id` to its caller. `Err` gives the reply back if the call is
    /// not waiting (cancelled, already answered, or never made).
    pub(super) fn deliver(&mut self, id: u64, reply: Reply) -> Result<(), Reply> {
        let wakers = &mut self.wakers;
        self.pending
            .deliver(id, reply, |waker| wakers.extend(waker))
    }

    /// What a call fails with once the connection is closed.
    pub(super) fn close_fault(&self) -> Fault {
        self.close_fault.clone().unwrap_or_else(disconnected_fault)
    }

    /// The caller of call `id` polls for its answer: `Ready` takes it out of the table,
    /// `Pending` keeps `waker` to be woken when it arrives. A call no longer in the table was
    /// failed by the connection's end.
    pub(crate) fn poll_answer(&mut self, id: u64, waker: &Waker) -> Poll<Reply> {
        // One lookup whether the answer is there or not.
        let polled = self.pending.poll(id, |w| match w {
            Some(w) if w.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        });
        match polled {
            Polled::Ready(reply) => Poll::Ready(reply),
            Polled::Waiting => Poll::Pending,
            Polled::Gone => Poll::Ready(Err(self.close_fault())),
        }
    }

    /// Move the wakers of callers whose answers arrived into `into`, to be woken once the lock
    /// is released.
    pub(crate) fn take_wakers(&mut self, into: &mut Vec<Waker>) {
        if into.is_empty() {
            std::mem::swap(into, &mut self.wakers);
        } else {
            into.append(&mut self.wakers);
        }
    }

    /// Enter call `id`, whose handler has to wait, in the running table: the receiver fires
    /// (or is dropped) when the peer cancels it. `None` once the connection is closed. Made
    /// only for handlers that wait, so a call answered at once costs no channel and no entry.
    pub(crate) fn watch_cancel(&mut self, id: u64) -> Option<oneshot::Receiver<()>> {
        if self.state == State::Closed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.running.track(id, Some(tx));
        Some(rx)
    }

    /// Our caller gave up on call `id`. Returns its answer if one had arrived meanwhile, for
    /// the caller to drop outside the lock (it may hold references).
    pub(crate) fn cancel_call(&mut self, id: u64) -> Option<Reply> {
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

    /// An incoming call finished: send its reply unless it was cancelled or wanted none.
    ///
    /// `tracked`: the call was entered in the running table (by [`Broker::watch_cancel`]) and
    /// is answered only if still there; a call answered inline, before any other frame was
    /// handled, was never entered and cannot have been cancelled.
    pub(crate) fn finish_call(
        &mut self,
        id: u64,
        answer: bool,
        reply: Option<Reply>,
        tracked: bool,
    ) {
        // A tracked call no longer tracked was cancelled by the peer: no answer.
        let still_wanted = self.running.finish(id, tracked);
        if !answer || self.state == State::Closed || !still_wanted {
            return;
        }
        let reply = match reply {
            None => return,
            // Most answers carry no references: no export bookkeeping, nothing to follow, and
            // the frame's length goes out with the envelope.
            Some(Ok(o)) if o.refs.is_empty() => {
                match self.frame_fits(ANSWER_HEAD_MAX + o.payload.len(), CALLER) {
                    Ok(()) => {
                        self.reserve_frame(16, &o.payload);
                        encode_answer_frame_head(self.out.buf(), id, o.ok, o.payload.len());
                        self.out.append_payload(o.payload);
                    }
                    Err(f) => self.send_fault(id, f.kind, f.message),
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
            // The references are exported now (or refused): ours to drop, outside the lock.
            self.bury(o.refs);
            let (descs, follow) = described?;
            Ok((o.ok, descs, follow, o.payload))
        });
        match outcome {
            Ok((ok, descs, follow, payload)) => {
                self.reserve_frame(16 + descs.len() * 11, &payload);
                let start = self.out.begin_frame();
                encode_answer_head(self.out.buf(), id, ok, &descs);
                self.out.push_payload(start, payload);
                self.write_updates(follow);
            }
            Err(f) => self.send_fault(id, f.kind, f.message),
        }
    }
}
