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
        mut payload: impl Payload,
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
        let whole_len = payload.len();
        let call_len = call_len_max(method.len(), whole_len, refs.len());
        self.frame_fits(call_len, PEER)?;
        let descs = self.describe(refs)?;
        let id = self.pending.next_id();
        let tail = self.take_tail(&mut payload, whole_len);
        let payload_len = if tail.is_some() {
            payload.len()
        } else {
            whole_len
        };
        let flags = (waiter.is_some(), deadline_ms, &extras);
        // No room in the peer's window (or calls wait before this one): the call waits,
        // encoded in a buffer of its own, until answers and credits make room.
        let park = !self.parked.is_empty() || !self.window_fits(call_len);
        let mut parked_head = BytesMut::new();
        let buf = if park {
            parked_head.reserve(64 + method.len() + descs.len() * 11);
            &mut parked_head
        } else {
            self.out
                .reserve_frame(57 + method.len() + descs.len() * 11, payload_len);
            self.out.buf()
        };
        let before = buf.len();
        // One call site: the encoder stays inlined into the common path.
        encode_call_frame_head(
            buf,
            payload_len,
            id,
            target,
            method.as_bytes(),
            flags,
            &descs,
        );
        let len = match &tail {
            None => buf.len() - before - frame::HEADER_LEN + payload_len,
            Some(t) => frame::split_header(buf, before, payload_len, t.len()),
        };
        let len = if park {
            let exported = descs
                .iter()
                .filter_map(|d| match *d {
                    RefDesc::Sender(id) if id != 0 => Some(id),
                    _ => None,
                })
                .collect();
            // Where the time left sits in the head: past the frame's header, in the body.
            let deadline = deadline_ms.map(|ms| {
                let header = match tail {
                    Some(_) => frame::SPLIT_HEADER_LEN,
                    None => frame::HEADER_LEN,
                };
                let field = message::deadline_field(id, target, ms);
                TimeLeft {
                    at: T::now(),
                    ms,
                    field: header + field.start..header + field.end,
                }
            });
            self.park((id, len, exported, deadline), parked_head, (payload, tail))
        } else {
            // Small pieces are copied straight from the caller's buffer (no allocation of
            // their own), large ones queued uncopied.
            payload.queue(&mut self.out);
            if let Some(t) = tail {
                self.out.append_payload(t);
            }
            self.charge_window(len)
        };
        if let Some(w) = waiter {
            self.pending.wait(id, Some(w), len);
        }
        Ok(id)
    }

    /// Park call `id` (`len` bytes, sending our objects `exported`, its envelope encoded in
    /// `head`, and its payload and tail); returns what it will count in the peer's window, once
    /// it leaves.
    #[cold]
    fn park(
        &mut self,
        (id, len, exported, deadline): Parking,
        head: BytesMut,
        (payload, tail): (impl Payload, Option<Bytes>),
    ) -> usize {
        let mut frame = Outbox::new();
        *frame.buf() = head;
        payload.queue(&mut frame);
        if let Some(t) = tail {
            frame.append_payload(t);
        }
        self.parked.push_back(Parked {
            id,
            len,
            exported,
            deadline,
            frame: frame.take_all(),
            behind: Vec::new(),
        });
        tracing::debug!(
            id,
            len,
            window_used = self.window_used,
            "call parked: the peer's call window is full"
        );
        self.peer.max_call_bytes.map_or(0, |_| len)
    }

    /// Queue the answer to call `id`, with the references `descs` describe, as a split frame
    /// if its payload has a tail to split off (see [`Broker::take_tail`]).
    fn queue_answer(&mut self, id: u64, ok: bool, descs: &[RefDesc], mut payload: impl Payload) {
        let len = payload.len();
        let tail = self.take_tail(&mut payload, len);
        self.out.reserve_frame(16 + descs.len() * 11, payload.len());
        let start = self.out.begin_frame();
        encode_answer_head(self.out.buf(), id, ok, descs);
        match &tail {
            None => self.out.finish_frame(start, payload.len()),
            Some(t) => {
                frame::split_header(self.out.buf(), start, payload.len(), t.len());
            }
        }
        payload.queue(&mut self.out);
        if let Some(t) = tail {
            self.out.append_payload(t);
        }
    }

    /// The tail of `payload`, split off if it goes split to this peer (see
    /// [`Broker::set_split_frames`]).
    #[inline]
    pub(super) fn take_tail(&self, payload: &mut impl Payload, len: usize) -> Option<Bytes> {
        if self.split_frames && len >= frame::MIN_TAIL {
            payload.take_tail()
        } else {
            None
        }
    }

    /// Whether a call of `len` bytes fits in the peer's call window now (any call does when
    /// none of ours is in it, and when the peer counts nothing).
    #[inline]
    fn window_fits(&self, len: usize) -> bool {
        match self.peer.max_call_bytes {
            None => true,
            Some(window) => self.window_used == 0 || self.window_used + len <= window,
        }
    }

    /// A call of `len` bytes enters the peer's window; returns what it counts there (0 for a
    /// peer that counts nothing).
    #[inline]
    fn charge_window(&mut self, len: usize) -> usize {
        if self.peer.max_call_bytes.is_none() {
            return 0;
        }
        self.window_used += len;
        len
    }

    /// `len` bytes of our calls left the peer's window: parked calls that now fit leave.
    #[inline]
    pub(super) fn free_window(&mut self, len: usize) {
        if len > 0 {
            self.window_used = self.window_used.saturating_sub(len);
            if !self.parked.is_empty() {
                self.unpark();
            }
        }
    }

    /// Queue the parked calls that fit in the peer's window now, in order; returns whether any
    /// left.
    pub(super) fn unpark(&mut self) -> bool {
        let mut any = false;
        while let Some(call) = self.parked.front() {
            if self.state == State::Closed || !self.window_fits(call.len) {
                break;
            }
            let Some(call) = self.parked.pop_front() else {
                break;
            };
            self.charge_window(call.len);
            let mut frame = call.frame;
            if let Some(left) = call.deadline
                && let Some(head) = frame.first_mut()
            {
                *head = with_time_left(head, &left, T::now());
            }
            for piece in frame.into_iter().chain(call.behind) {
                self.out.append_payload(piece);
            }
            any = true;
        }
        any
    }

    /// Hand the answer of call `id` to its caller. `Err` gives the reply back if the call is
    /// not waiting (cancelled, already answered, or never made).
    pub(super) fn deliver(
        &mut self,
        id: u64,
        reply: Reply<T::Object, Arrived>,
    ) -> Result<(), Reply<T::Object, Arrived>> {
        let events = &mut self.events;
        let delivered = self.pending.deliver(id, reply, |waiter| {
            events.extend(waiter.map(Event::Answered));
        });
        match delivered {
            Ok(len) => {
                self.free_window(len);
                Ok(())
            }
            Err((reply, len)) => {
                self.free_window(len);
                Err(reply)
            }
        }
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
    ) -> Poll<Reply<T::Object, Arrived>> {
        // One lookup whether the answer is there or not.
        match self.pending.poll(id, refresh) {
            Polled::Ready(reply) => Poll::Ready(reply),
            Polled::Waiting => Poll::Pending,
            Polled::Gone => Poll::Ready(Err(self.close_fault())),
        }
    }

    /// Our caller gave up on call `id`: the peer is told (a cancel). Returns its answer if one
    /// had arrived meanwhile, for the caller to drop (it may hold references).
    pub fn cancel_call(&mut self, id: u64) -> Option<Reply<T::Object, Arrived>> {
        // A parked call was never sent: it just goes, and the objects it would have sent are
        // no longer sent to the peer (as if the peer had released them).
        if let Some(at) = self.parked.iter().position(|call| call.id == id) {
            if let Some(call) = self.parked.remove(at) {
                // What had to follow it now follows the call before it, or, if none is
                // parked, what is queued already.
                match at
                    .checked_sub(1)
                    .and_then(|before| self.parked.get_mut(before))
                {
                    Some(before) => before.behind.extend(call.behind),
                    None => {
                        for piece in call.behind {
                            self.out.append_payload(piece);
                        }
                    }
                }
                for object in call.exported {
                    if let Released::Freed { token, .. } = self.exports.release(object, 1) {
                        self.events.push(Event::Unexported {
                            id: object,
                            object: token,
                        });
                    }
                }
            }
            let _ = self.pending.cancel(id, false);
            return None;
        }
        // A peer that counts our calls keeps counting this one until its last word on it (one
        // whose hello has not arrived yet is held to the floor's window, and every peer with a
        // window sends that word: a pb peer's hello always carries our window to it).
        let keep = self.peer.max_call_bytes.is_some() && self.state != State::Closed;
        match self.pending.cancel(id, keep)? {
            Ok((_waiting, len)) => {
                if self.state != State::Closed {
                    self.write_message(&Message::Cancel { id });
                }
                self.free_window(len);
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
    /// none, or is `None` (the handler was dropped). Its `charge` ([`Incoming::charge`])
    /// leaves our call window; a peer that counts its calls hears of a call that gets no
    /// answer (a credit, or, if it was cancelled, a closing fault).
    ///
    /// `tracked`: the call was entered in the running table (by [`Broker::watch`]) and is
    /// answered only if still there; a call answered inline, before any other frame was
    /// handled, was never entered and cannot have been cancelled.
    pub fn finish_call<P: Payload>(
        &mut self,
        id: u64,
        answer: bool,
        reply: Option<Reply<T::Object, P>>,
        (tracked, charge): (bool, usize),
    ) {
        self.call_ended(charge, answer);
        // A tracked call no longer tracked was cancelled by the peer: no answer.
        let still_wanted = self.running.finish(id, tracked);
        if !answer || self.state == State::Closed || !still_wanted || reply.is_none() {
            self.bury(reply.into_iter().flatten().flat_map(|o| o.refs));
            if answer && self.state != State::Closed && self.peer_hears_window {
                self.send_fault(
                    id,
                    Fault {
                        kind: FaultKind::Cancelled,
                        message: String::new(),
                    },
                );
            }
            return;
        }
        let reply = match reply {
            None => return,
            // Most answers carry no references: no export bookkeeping, and the frame's length
            // goes out with the envelope.
            Some(Ok(o)) if o.refs.is_empty() => {
                let len = o.payload.len();
                match self.frame_fits(ANSWER_HEAD_MAX + len, CALLER) {
                    Ok(()) if self.split_frames && len >= frame::MIN_TAIL => {
                        self.queue_answer(id, o.ok, &[], o.payload);
                    }
                    Ok(()) => {
                        self.out.reserve_frame(16, len);
                        encode_answer_frame_head(self.out.buf(), id, o.ok, len);
                        o.payload.queue(&mut self.out);
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
            Ok((ok, descs, payload)) => self.queue_answer(id, ok, &descs, payload),
            Err(f) => self.send_fault(id, f),
        }
    }
}

/// What a call that parks keeps besides its frame: its id, its length in the peer's window, our
/// objects it sends, and its deadline (see [`Parked`]).
type Parking = (u64, usize, Vec<u64>, Option<TimeLeft>);

/// A parked call's deadline: `ms` left when it parked `at` (by [`Tokens::now`]), written in
/// the varint at `field` of its frame's first piece.
#[derive(Debug)]
pub(super) struct TimeLeft {
    pub(super) at: std::time::Instant,
    pub(super) ms: u64,
    pub(super) field: std::ops::Range<usize>,
}

/// `head` with the varint at `left.field` written again as the milliseconds left at `now`
/// (rounded up, as a call's deadline is sent), padded to the same bytes. The time left only
/// shrinks, whatever `now` says (a clock that steps back leaves it as it was), so it fits,
/// and the frame keeps its length.
pub(super) fn with_time_left(head: &Bytes, left: &TimeLeft, now: std::time::Instant) -> Bytes {
    let waited = now.saturating_duration_since(left.at);
    let rest = std::time::Duration::from_millis(left.ms).saturating_sub(waited);
    let mut ms = rest.as_millis().min(u128::from(u64::MAX)) as u64;
    if std::time::Duration::from_millis(ms) < rest {
        ms += 1;
    }
    let mut out = BytesMut::from(&head[..]);
    if let Some(field) = out.get_mut(left.field.clone()) {
        message::put_varint_padded(field, ms.min(left.ms));
    }
    out.freeze()
}
