//! The reader: frames decoded and handed on in batches, the close signal and the keep-alive
//! timer polled only when they fire, and frames held back while the output is congested.

use super::*;

/// The reader task. With `check` (our hello and the handshake timeout, on a dialed
/// connection), the peer's hello is checked before any frame, within the timeout: the
/// keep-alive timer keeps that deadline too, so the wait for the hello costs no timer or task
/// of its own. Its timing starts now, when the connection starts.
///
/// A function that returns the reader rather than an `async fn`: the future then holds its
/// arguments once, not once as given and again as moved into its body, and what is made of
/// them before the first poll (the keep-alive state) replaces them.
pub(super) fn run_reader<R: AsyncRead + Send + Unpin + 'static>(
    conn: Arc<ConnShared>,
    mut rd: R,
    mut rbuf: BytesMut,
    mut decoder: FrameDecoder,
    timers: Timers,
    check: Option<(Hello, Duration)>,
    span: tracing::Span,
) -> ConnectionReader {
    let hello = check.map(|(_, timeout)| timeout);
    let mut live = Liveness::new(LivenessConfig { hello, ..timers }, now());
    let mut check = check.map(|(ours, _)| ours);
    // Boxed where it is made (about 800 bytes): not copied into a task and out of it again as
    // the task is spawned and started, and the task's own allocation stays small.
    Box::pin(async move {
        let _closes = CloseOnPanic(&conn);
        // One wait for a local close, made once: polling it again is cheap, making it is not.
        let closed = conn.closed();
        tokio::pin!(closed);
        let mut wakers = Vec::new();
        let timer = tokio::time::sleep_until(live.poll_timeout().into());
        tokio::pin!(timer);
        // The connection is that waker (see `impl Wake for ConnShared`): no allocation.
        let side = &conn.reader_wake;
        let side_waker = Waker::from(conn.clone());
        let mut known_task = None;
        let mut held = Held::default();
        // Answers of the batch not handled yet (kept, so that batches allocate nothing).
        let mut answers: Vec<Frame> = Vec::new();
        // A split frame whose tail is being read (into an allocation of its own, not `rbuf`).
        let mut reading: Option<(Bytes, Tail)> = None;
        // Our hello may wait in the output (the writer task starts only when needed): it leaves
        // after the first batch at the latest, with that batch's answers.
        let mut first = true;
        // On a runtime of several workers, a reader that read a batch of many calls (a peer
        // with many calls in flight) makes way before it reads on (see `make_way`). tokio runs
        // a task that its worker woke while running (as the worker's turn of the I/O driver
        // does) on that worker again, in a slot no other worker takes from: busy connections
        // otherwise stay together on one worker while the others idle. Batches of a few calls
        // (sequential callers) and of answers never make way, nor does a reader on a
        // current-thread runtime, where nothing is gained by it.
        let spread = tokio::runtime::Handle::try_current()
            .is_ok_and(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let reason = 'conn: loop {
            if let Some(ours) = &check {
                match take_hello(&mut rbuf, ours) {
                    Ok(Some(theirs)) => {
                        check = None;
                        live.handle_hello(now());
                        // Our limits, if they changed since our hello left, go out with the
                        // batch's flush, or the writer's if no frame follows.
                        decoder.accept_tails(conn.split_frames(&theirs));
                        if conn.peer_hello(&theirs) {
                            conn.wake_writer.notify_one();
                        }
                    }
                    Ok(None) => {}
                    Err(e) => break 'conn CloseReason::Handshake(e),
                }
            }
            let mut any_frame = false;
            let mut calls = 0u32;
            let mut handled = false;
            // No frame is taken before the peer's hello.
            while check.is_none() {
                decoder.set_max_len(conn.max_frame_len.load(Ordering::Relaxed));
                // A split frame's tail comes before any later byte: nothing else is read until it
                // is complete.
                let next = match reading.take_if(|(_, tail)| tail.is_complete()) {
                    Some((body, tail)) => Ok(Some(Frame {
                        body,
                        tail: Some(Box::new(tail.finish())),
                    })),
                    None if reading.is_some() => break,
                    None => match decoder.next(&mut rbuf) {
                        Ok(Some(Decoded::Frame(body))) => Ok(Some(Frame::from(body))),
                        Ok(Some(Decoded::Split { head, tail_len })) => {
                            match Tail::start(tail_len, &mut rbuf) {
                                // All of it is here already.
                                Ok(Err(tail)) => Ok(Some(Frame {
                                    body: head,
                                    tail: Some(Box::new(tail)),
                                })),
                                Ok(Ok(tail)) => {
                                    reading = Some((head, tail));
                                    break;
                                }
                                Err(e) => Err(e),
                            }
                        }
                        Ok(None) => Ok(None),
                        Err(e) => Err(e),
                    },
                };
                match next {
                    Ok(Some(frame)) => {
                        calls += u32::from(crate::message::is_call(&frame.body));
                        // One clock reading per batch, not per frame: they arrived together.
                        if !any_frame {
                            any_frame = true;
                            live.handle_frame(now());
                        }
                        // While the peer is not taking our output, its calls (and everything that
                        // must stay in line with them) wait: running them would queue more.
                        // A held call counts in our call window from now on (one that does not
                        // fit is refused at once, and not held). A revocation or cache update
                        // waits too behind a held call that sends its object.
                        // Calls held only at the cap on running calls (our output is taken): a
                        // cancel does not wait, as a held call may be waiting for the very call
                        // it cancels to end, and a held call it cancels never runs; nor does a
                        // ping, whose pong keeps a peer waiting for its calls from taking the
                        // connection for idle. While our output is congested both keep their
                        // place in line: what they make would queue more.
                        let congested = conn.is_congested();
                        if !congested
                            && !held.is_empty()
                            && let Some(call) = crate::message::cancelled_id(&frame.body)
                                .and_then(|id| held.take_call(id))
                        {
                            handled = true;
                            if let Err(e) = conn.drop_held_call(&call) {
                                break 'conn CloseReason::Protocol(e.to_string());
                            }
                            continue;
                        }
                        let overtakes = || {
                            crate::message::may_overtake(&frame.body)
                                || (!congested
                                    && (crate::message::cancelled_id(&frame.body).is_some()
                                        || crate::message::is_ping(&frame.body)))
                        };
                        let wait = if held.is_empty() {
                            congested && !overtakes()
                        } else {
                            !overtakes() || conn.must_follow_held(&frame.body)
                        };
                        if wait {
                            match conn.hold_frame(&frame) {
                                Ok(true) => {
                                    held.push(frame);
                                    if let Err(reason) = check_held_others(&held, &conn) {
                                        break 'conn reason;
                                    }
                                }
                                Ok(false) => handled = true,
                                Err(e) => break 'conn CloseReason::Protocol(e.to_string()),
                            }
                            continue;
                        }
                        // Answers that arrive together are handled together, under one
                        // acquisition of the broker's lock, before any other frame (which keeps
                        // their order with it).
                        if crate::message::is_answer(&frame.body) {
                            answers.push(frame);
                            continue;
                        }
                        // The frame is not an answer: the batch needs a flush whatever the
                        // answers queued.
                        handled = true;
                        if !answers.is_empty()
                            && let Err(e) = conn.handle_answers(&mut answers, &mut wakers)
                        {
                            break 'conn CloseReason::Protocol(e.to_string());
                        }
                        match conn.handle_frame(frame, &mut wakers, None) {
                            Ok(None) => {}
                            // At the cap on running calls: held until one ends (counted in
                            // our call window from now on, as any held call).
                            Ok(Some(frame)) => match conn.hold_frame(&frame) {
                                Ok(true) => {
                                    held.push(frame);
                                    conn.holding.store(true, Ordering::Release);
                                    if let Err(reason) = check_held_others(&held, &conn) {
                                        break 'conn reason;
                                    }
                                }
                                Ok(false) => {}
                                Err(e) => break 'conn CloseReason::Protocol(e.to_string()),
                            },
                            Err(e) => break 'conn CloseReason::Protocol(e.to_string()),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => break 'conn CloseReason::Protocol(e.to_string()),
                }
            }
            // Answers queue nothing (but calls of ours they made room for): a batch of them alone
            // rarely needs a flush.
            if !answers.is_empty() {
                match conn.handle_answers(&mut answers, &mut wakers) {
                    Ok(queued) => handled |= queued,
                    Err(e) => break 'conn CloseReason::Protocol(e.to_string()),
                }
            }
            // Held-back frames run, in order, as soon as the output has drained, and calls as
            // soon as fewer than `max_in_flight_calls` run. (Looked at again after a call was
            // held for the cap and `holding` set: a call that ended in between is seen here.)
            while !held.is_empty() && !conn.is_congested() {
                let Some((frame, read_at)) = held.pop() else { break };
                handled = true;
                match conn.handle_frame(frame, &mut wakers, Some(read_at)) {
                    Ok(None) => {}
                    Ok(Some(frame)) => {
                        held.push_front(frame, read_at);
                        // Cancels held in line while the output was congested, of calls not
                        // held any more (running, or done): one may end a call this one waits
                        // for.
                        for (cancel, read_at) in held.take_free_cancels() {
                            if let Err(e) = conn.handle_frame(cancel, &mut wakers, Some(read_at)) {
                                break 'conn CloseReason::Protocol(e.to_string());
                            }
                        }
                        break;
                    }
                    Err(e) => break 'conn CloseReason::Protocol(e.to_string()),
                }
            }
            conn.holding.store(!held.is_empty(), Ordering::Release);
            // Answers and faults for the whole batch go out in one write.
            if handled || std::mem::take(&mut first) {
                conn.end_batch();
            }
            if spread && calls >= SPREAD_BATCH {
                tracing::trace!(connection = conn.id, calls, "reader makes way for its worker's other tasks");
                make_way().await;
            }
            if conn.is_closed() {
                break CloseReason::Local;
            }
            // Reading stops only when the peer sends on and on without reading: once more of its
            // calls are held back while our output is congested than may run at once here
            // (`max_in_flight_calls`), which a peer within that limit never reaches, so two pb
            // peers never both stop reading. Other frames (releases, pings) get as many places
            // again. Held frames thus cost at most about what running calls may cost anyway.
            // Calls held only because `max_in_flight_calls` run (a limit the peer cannot know)
            // get `HELD_PER_CALL` times as many places: meanwhile the answers to the running
            // calls' own calls, and the cancels that end them, must still be read.
            // A peer that floods us with large calls while we call it nothing is held to bytes too
            // (see `Limits::max_held_bytes` for why only then; the call window bounds its calls
            // otherwise, and `check_held_others` its other frames).
            let places = match conn.is_congested() {
                true => conn.max_held_frames,
                false => conn.max_held_frames.saturating_mul(HELD_PER_CALL),
            };
            let paused = held.calls > places
                || held.len() - held.calls > places
                || (held.bytes > conn.max_held_bytes && conn.lock().pending_calls() == 0);
            let mut roomy = false;
            let event = {
                // Waited for only while frames are held back: most turns hold none, and do not
                // pay for a `Notified` they would not poll.
                let drained = (!held.is_empty()).then(|| conn.drained.notified());
                tokio::pin!(drained);
                std::future::poll_fn(|cx| {
                    // The close signal and the timer are polled only after they woke us, not on
                    // every read: most wake-ups are data.
                    if side.take(cx.waker(), &mut known_task) {
                        let mut side_cx = Context::from_waker(&side_waker);
                        if closed.as_mut().poll(&mut side_cx).is_ready() {
                            return Poll::Ready(ReaderEvent::Closed);
                        }
                        if live.is_enabled() && timer.as_mut().poll(&mut side_cx).is_ready() {
                            return Poll::Ready(ReaderEvent::Timer);
                        }
                    }
                    if let Some(drained) = drained.as_mut().as_pin_mut()
                        && drained.poll(cx).is_ready()
                    {
                        return Poll::Ready(ReaderEvent::Drained);
                    }
                    if !paused {
                        // A split frame's tail goes into its own allocation, which takes no more
                        // than the tail.
                        if let Some((_, tail)) = &mut reading {
                            let read = rd.read_buf(tail.buf());
                            tokio::pin!(read);
                            if let Poll::Ready(r) = read.poll(cx) {
                                return Poll::Ready(ReaderEvent::Read(r));
                            }
                            return Poll::Pending;
                        }
                        // Frames held at the first attempt (answers whose callers have not run
                        // yet) are usually gone by the next: room is made again then.
                        if !roomy {
                            roomy = decoder.prepare_read(&mut rbuf);
                        }
                        let read = rd.read_buf(&mut rbuf);
                        tokio::pin!(read);
                        if let Poll::Ready(r) = read.poll(cx) {
                            return Poll::Ready(ReaderEvent::Read(r));
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            match event {
                ReaderEvent::Read(Ok(0)) => break CloseReason::PeerClosed,
                ReaderEvent::Read(Ok(n)) => {
                    conn.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
                ReaderEvent::Read(Err(e)) => break conn.io_reason(&e),
                ReaderEvent::Closed => break CloseReason::Local,
                ReaderEvent::Drained => {}
                ReaderEvent::Timer => {
                    if paused {
                        // Not reading is our choice, not the peer's silence; a peer that reads
                        // nothing is cut by `write_stall_timeout`.
                        live.handle_frame(now());
                    }
                    if let Err(reason) = on_timer(&mut live, &conn) {
                        break reason;
                    }
                    timer.as_mut().reset(live.poll_timeout().into());
                    // The reset timer must be polled again to be armed.
                    side.force();
                }
            }
        };
        match &reason {
            CloseReason::Protocol(why) => {
                tracing::warn!(connection = conn.id, peer = ?conn.peer_addr, %why, "closing connection: protocol violation")
            }
            CloseReason::Io(why) => {
                tracing::debug!(connection = conn.id, %why, "connection failed")
            }
            CloseReason::IdleTimeout(after) if check.is_some() => {
                tracing::warn!(connection = conn.id, peer = ?conn.peer_addr, ?after, "closing connection: pb handshake failed: no hello within handshake_timeout")
            }
            CloseReason::Handshake(e) => {
                tracing::warn!(connection = conn.id, peer = ?conn.peer_addr, error = %e, "closing connection: pb handshake failed")
            }
            CloseReason::IdleTimeout(after) => {
                tracing::info!(connection = conn.id, peer = ?conn.peer_addr, ?after, "closing connection: no frame from the peer within idle_timeout")
            }
            _ => tracing::debug!(connection = conn.id, ?reason, "connection closed"),
        }
        conn.close(reason);
        // The connection may outlive its reader: it keeps no waker of the ended task.
        conn.reader_wake.forget_task();
        recycle_read_buffer(rbuf);
    }.instrument(span))
}

/// The calls in one batch from which a reader on a runtime of several workers makes way before
/// it reads on (see `spread` in [`run_reader`]).
const SPREAD_BATCH: u32 = 8;

/// Lets the worker's other tasks run before the reader reads on, and an idle worker take the
/// reader: a task that wakes itself while it is polled goes to the back of its worker's run
/// queue, from which other workers steal, and tokio wakes an idle worker for it.
/// (`tokio::task::yield_now` does not: it leaves its wake-up until the worker next turns its
/// I/O driver, which puts the task back in the worker's own slot.)
async fn make_way() {
    let mut woke = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut woke, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// What woke the reader.
pub(super) enum ReaderEvent {
    Read(io::Result<usize>),
    Closed,
    Drained,
    Timer,
}

/// The reader's close signal and timer wake the connection, which notes it and wakes the
/// reader's task ([`FlagWake`](crate::wake::FlagWake)): the connection is a waker already shared, so that the reader
/// allocates none.
impl std::task::Wake for ConnShared {
    fn wake(self: Arc<Self>) {
        self.reader_wake.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.reader_wake.wake();
    }
}

/// How many calls may be held back for each that may run, when they are held only because
/// `max_in_flight_calls` run (see the reader's pause): as the Twisted PB broker counts.
const HELD_PER_CALL: usize = pb_proto::twisted::HELD_PER_CALL;

/// Closes the connection when the frames other than calls held back (releases, cancels,
/// pings, goodbyes, updates and revocations behind a held call, frames that will not decode)
/// take more than `Limits::max_held_bytes`, at least one frame of `max_frame_len`, while our
/// calls await the peer's answers. Calls held are bounded by the call window, and with no call
/// of ours pending the reader stops reading past `max_held_bytes`; but while we wait for the
/// peer it must read on (the answers may be what the running calls, whose end frees the held
/// ones, wait for), and nothing else would bound these frames but their count
/// (`HELD_PER_CALL` times `max_in_flight_calls`, each up to `max_frame_len`). Stopping would
/// risk waiting for ever on answers left unread; a pb peer's own such frames are a few bytes
/// each (an update behind a held call aside), so only a peer that floods them gets here.
/// Checked as a frame is held, so that a call of ours made later does not cut a peer that
/// sent nothing more.
fn check_held_others(held: &Held, conn: &ConnShared) -> Result<(), CloseReason> {
    let cap = conn
        .max_held_bytes
        .max(conn.max_frame_len.load(Ordering::Relaxed));
    if held.other_bytes <= cap || conn.lock().pending_calls() == 0 {
        return Ok(());
    }
    Err(CloseReason::Protocol(format!(
        "{} bytes of frames other than calls held back while our calls await the peer's \
         answers exceed the limit max_held_bytes = {cap}",
        held.other_bytes
    )))
}

/// Frames held back, in order, each with when it was read (a call's deadline counts from
/// then, not from when it runs). A held call that the peer cancels leaves its place empty (so
/// that taking it out costs no search), and the empty places are skipped.
#[derive(Default)]
pub(super) struct Held {
    frames: std::collections::VecDeque<Option<(Frame, tokio::time::Instant)>>,
    /// The place in line of `frames`' first (places count up as frames are pushed).
    first: u64,
    /// Where each held call is in line, by its request id (the peer's numbers, so std's
    /// keyed hash).
    calls_at: std::collections::HashMap<u64, u64>,
    /// How many frames are held (empty places not counted).
    live: usize,
    /// How many of them are cancels.
    cancels: usize,
    /// How many of them are calls.
    pub(super) calls: usize,
    /// The bytes of them.
    pub(super) bytes: usize,
    /// The bytes of those that are not calls (the call window does not count them).
    pub(super) other_bytes: usize,
}

impl Held {
    pub(super) fn push(&mut self, frame: Frame) {
        // A copy of its own: a slice would keep the whole read buffer it came in alive, which
        // for large frames is up to twice their size, and `bytes` would undercount what is
        // held. Only a congested connection, or one at the cap on running calls, holds frames
        // back, and then copies are cheap next to what waits. (A tail is an allocation of its
        // own already.)
        let frame = Frame {
            body: Bytes::copy_from_slice(&frame.body),
            tail: frame.tail,
        };
        self.count(&frame, true);
        if let Some(id) = crate::message::call_id(&frame.body) {
            self.calls_at
                .insert(id, self.first + self.frames.len() as u64);
        }
        // Held as it is read: a clock reading only for frames held back.
        self.frames
            .push_back(Some((frame, tokio::time::Instant::now())));
    }

    /// Count `frame` in (`true`) or out.
    fn count(&mut self, frame: &Frame, add: bool) {
        let call = usize::from(crate::message::is_call(&frame.body));
        let cancel = usize::from(crate::message::cancelled_id(&frame.body).is_some());
        let other = if call == 0 { frame.len() } else { 0 };
        if add {
            self.live += 1;
            self.calls += call;
            self.cancels += cancel;
            self.bytes += frame.len();
            self.other_bytes += other;
        } else {
            self.live -= 1;
            self.calls -= call;
            self.cancels -= cancel;
            self.bytes -= frame.len();
            self.other_bytes -= other;
        }
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// How many frames are held.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Whether call `id` is held.
    #[cfg(test)]
    pub(super) fn holds_call(&self, id: u64) -> bool {
        self.calls_at.contains_key(&id)
    }

    /// Held call `id`, taken out of line, if it is held.
    pub(super) fn take_call(&mut self, id: u64) -> Option<Frame> {
        let at = self.calls_at.remove(&id)?;
        let slot = self
            .frames
            .get_mut(usize::try_from(at.checked_sub(self.first)?).ok()?)?;
        let (frame, _) = slot.take()?;
        self.count(&frame, false);
        if self.live == 0 {
            self.frames.clear();
            self.first = at + 1;
        } else if self.frames.len() > 2 * self.live + 32 {
            self.compact();
        }
        Some(frame)
    }

    /// Drops the empty places (calls taken out of line), so that they cost no memory while
    /// other frames stay held; places are counted again from `first`.
    fn compact(&mut self) {
        self.frames.retain(Option::is_some);
        self.calls_at.clear();
        for (i, frame) in self.frames.iter().enumerate() {
            if let Some(id) = frame
                .as_ref()
                .and_then(|(f, _)| crate::message::call_id(&f.body))
            {
                self.calls_at.insert(id, self.first + i as u64);
            }
        }
    }

    /// The cancels held of calls not held (any more), taken out of line in order.
    pub(super) fn take_free_cancels(&mut self) -> Vec<(Frame, tokio::time::Instant)> {
        let mut taken = Vec::new();
        if self.cancels == 0 {
            return taken;
        }
        for i in 0..self.frames.len() {
            let free = self.frames[i].as_ref().is_some_and(|(f, _)| {
                crate::message::cancelled_id(&f.body)
                    .is_some_and(|id| !self.calls_at.contains_key(&id))
            });
            if let Some(held) = free.then(|| self.frames[i].take()).flatten() {
                self.count(&held.0, false);
                taken.push(held);
            }
        }
        if self.live == 0 {
            self.first += self.frames.len() as u64;
            self.frames.clear();
        }
        taken
    }

    /// Put `frame`, just taken by [`Held::pop`] with when it was read, back in front.
    pub(super) fn push_front(&mut self, frame: Frame, read_at: tokio::time::Instant) {
        self.count(&frame, true);
        self.first -= 1;
        if let Some(id) = crate::message::call_id(&frame.body) {
            self.calls_at.insert(id, self.first);
        }
        self.frames.push_front(Some((frame, read_at)));
    }

    /// The first frame held, with when it was read.
    pub(super) fn pop(&mut self) -> Option<(Frame, tokio::time::Instant)> {
        while let Some(slot) = self.frames.pop_front() {
            self.first += 1;
            if let Some((frame, read_at)) = slot {
                self.count(&frame, false);
                if let Some(id) = crate::message::call_id(&frame.body) {
                    self.calls_at.remove(&id);
                }
                return Some((frame, read_at));
            }
        }
        None
    }
}
