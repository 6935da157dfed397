//! The write path: output accounting and backpressure, who writes (a caller, the reader or the
//! writer task), vectored writes, and the write-stall timeout.

use super::*;

/// Wakes the connection's writer task, and starts it on the first wake-up: most output is
/// written directly (by callers and the reader), so a short connection never needs the task,
/// and never pays for spawning it.
#[derive(Default)]
pub(super) struct WriterWake {
    pub(super) notify: Notify,
    /// Set once the task is started (or can no longer be).
    pub(super) started: AtomicBool,
    /// Set by a wake-up of the running task, cleared by the task before it collects the
    /// output: while it is set, the task has a wake-up it has not acted on yet, and will see
    /// whatever is queued now, so further wake-ups cost nothing (most of the callers that
    /// queue calls in one scheduler tick).
    pub(super) woken: AtomicBool,
    /// What starting the task takes, from the connection's start until the task starts.
    pub(super) start: Mutex<Option<(Weak<ConnShared>, tokio::runtime::Handle, tracing::Span)>>,
}

impl WriterWake {
    /// Record what the writer task will run on (the current runtime) and in which span.
    pub(super) fn prepare(&self, conn: &Arc<ConnShared>, span: tracing::Span) {
        let handle = tokio::runtime::Handle::current();
        *self.start.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Arc::downgrade(conn), handle, span));
    }

    pub(super) fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Wake the writer task, starting it if it is not running yet.
    pub(super) fn notify_one(&self) {
        if !self.is_started() {
            // Before `prepare`, the wake-up waits in `notify` for the next one to start it.
            self.notify.notify_one();
            self.start();
        } else if !self.woken.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// The task is about to collect the output: later wake-ups are new work.
    pub(super) fn clear_woken(&self) {
        self.woken.store(false, Ordering::Release);
    }

    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    #[cold]
    pub(super) fn start(&self) {
        let start = self.start.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Before `prepare` there is nothing to start yet: the wake-up stays in `notify`.
        let Some((conn, handle, span)) = start else {
            return;
        };
        self.started.store(true, Ordering::Release);
        if let Some(conn) = conn.upgrade() {
            handle.spawn(run_writer(conn).instrument(span));
        }
    }
}

impl Output {
    /// Whether everything queued has been written.
    pub(super) fn is_empty(&self) -> bool {
        self.first >= self.queue.len() && self.tail.is_empty()
    }
}

/// The most chunks handed to one vectored write.
pub(super) const MAX_IOSLICES: usize = 64;

/// The transport's write half and the chunks of a write in progress.
pub(super) struct Output {
    pub(super) wr: Box<dyn AsyncWrite + Send + Unpin>,
    pub(super) queue: Vec<Bytes>,
    /// The first chunk of `queue` not yet written.
    pub(super) first: usize,
    /// What goes after the chunks of `queue`: the broker's output buffer itself, exchanged for
    /// this one's emptied allocation when everything before had been written (see
    /// [`Broker::take_transmit_to`]), so a write costs no chunk split off a shared buffer.
    pub(super) tail: BytesMut,
    /// The writer task's last poll was left waiting for the transport (a write or a flush):
    /// the transport holds the writer's waker, which no other poll may replace.
    pub(super) writer_waiting: bool,
}

/// Writes whatever the broker queues and nobody wrote directly: output queued by callers
/// (batched: every call started in one scheduler tick goes out in one write), by handlers that
/// finished in their own task, and anything a direct write left behind.
pub(super) async fn run_writer(conn: Arc<ConnShared>) {
    // A multi-thread runtime runs a task woken by another task's poll next, in its worker's
    // LIFO slot: woken by a caller, the writer would run right after it and write one call per
    // system call. There it yields once before writing, which defers it until its worker has
    // run every task that is ready, so that the calls they queue go out in one write. A
    // current-thread runtime queues a woken task behind every ready one already, and a yield
    // would hold the write back until after the next poll of the I/O driver.
    let yield_first = !matches!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
    loop {
        let notified = conn.wake_writer.notified();
        // Cleared before the output is collected (under the broker's lock): whoever queues
        // after that finds the flag cleared and wakes the task again, and whoever queued
        // before (and, finding it set, did not) is collected by this pass.
        conn.wake_writer.clear_woken();
        let mut collect = true;
        // Armed only once the transport is full, so a healthy connection pays no timer.
        let mut stall: Option<(Pin<Box<tokio::time::Sleep>>, u64)> = None;
        let written = std::future::poll_fn(|cx| {
            let polled = match conn.lock_out().as_mut() {
                Some(out) => {
                    // `poll_output` collects only into an empty queue; a caller's direct write
                    // may have left one behind.
                    if std::mem::take(&mut collect) && !out.is_empty() {
                        conn.collect_output(out);
                    }
                    let polled = conn.poll_output(out, cx);
                    out.writer_waiting = polled.is_pending();
                    polled
                }
                None => Poll::Ready(Ok(())),
            };
            if polled.is_pending()
                && let Some(after) = conn.write_stall_timeout
            {
                return conn.poll_stall(&mut stall, after, cx).map(Err);
            }
            polled.map_err(|e| conn.io_reason(&e))
        })
        .await;
        if let Err(reason) = written {
            if let CloseReason::WriteStalled(after) = &reason {
                tracing::info!(connection = conn.id, peer = ?conn.peer_addr, ?after, unsent = conn.unsent.load(Ordering::Relaxed), "closing connection: the peer stopped reading (write_stall_timeout)");
            }
            conn.close(reason);
            break;
        }
        if conn.is_closed() {
            break;
        }
        notified.await;
        if yield_first {
            tokio::task::yield_now().await;
        }
    }
    let out = conn.lock_out().take();
    if let Some(mut out) = out {
        let _ = out.wr.shutdown().await;
    }
}

impl ConnShared {
    /// Whether more than `Limits::max_unsent_bytes` wait to be written (and have not yet
    /// drained to half of that).
    pub(super) fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Acquire)
    }

    /// Completes once the output is not congested, or the connection is closed.
    pub(super) async fn output_space(&self) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_congested() || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// The broker holds `queued` bytes not yet in the write queue: past the limit, move them
    /// there now, so they count and the output shows as congested.
    pub(super) fn note_queued(&self, queued: usize) {
        if queued + self.unsent.load(Ordering::Relaxed) > self.max_unsent {
            self.collect_now();
        }
    }

    /// Count `n` more bytes handed to the write path.
    pub(super) fn add_unsent(&self, n: usize) {
        let now = self.unsent.fetch_add(n, Ordering::AcqRel) + n;
        if now > self.max_unsent && !self.is_congested() {
            self.congested.store(true, Ordering::Release);
            tracing::debug!(
                connection = self.id,
                unsent = now,
                max_unsent_bytes = self.max_unsent,
                "output congested: holding back the peer's calls until it drains"
            );
        }
    }

    /// Count `n` bytes written; wake whoever waits for the output to drain.
    pub(super) fn sub_unsent(&self, n: usize) {
        let now = self.unsent.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
        if now <= self.max_unsent / 2 && self.is_congested() {
            self.congested.store(false, Ordering::Release);
            self.space.notify_waiters();
            self.drained.notify_one();
        }
    }

    /// Fold queued releases into the broker and lock it, for taking its output.
    pub(super) fn lock_for_transmit(&self) -> MutexGuard<'_, Broker> {
        // A release queued after the flag was read sets it again and wakes the writer.
        let mut released = if self.releases_queued.load(Ordering::Acquire)
            && self.releases_queued.swap(false, Ordering::AcqRel)
        {
            std::mem::take(&mut *self.releases.lock().unwrap_or_else(|p| p.into_inner()))
        } else {
            Vec::new()
        };
        let mut broker = self.lock();
        for &(id, generation, count) in &released {
            broker.release_imported(id, generation, count);
        }
        if released.capacity() > 0 && released.capacity() <= crate::broker::KEEP_RELEASES {
            // The list goes back, emptied, so the queue keeps its capacity from batch to batch
            // (unless releases were queued meanwhile in a list of their own, or a burst made
            // it large).
            released.clear();
            let mut queue = self.releases.lock().unwrap_or_else(|p| p.into_inner());
            if queue.capacity() == 0 {
                *queue = released;
            }
        }
        broker
    }

    /// Append everything queued for the peer to `into`.
    #[cfg(test)]
    pub(super) fn take_transmit(&self, into: &mut Vec<Bytes>) {
        self.lock_for_transmit().take_transmit(into);
    }

    /// Move everything the broker queued into the write queue, counting it as unsent; returns
    /// how many bytes moved.
    pub(super) fn collect_output(&self, out: &mut Output) -> usize {
        // Written chunks at the front are dropped once they are most of the queue, so a queue
        // that never empties does not grow without end.
        if out.first >= out.queue.len() {
            out.queue.clear();
            out.first = 0;
        } else if out.first >= 64 && out.first * 2 >= out.queue.len() {
            out.queue.drain(..out.first);
            out.first = 0;
        }
        let added = self
            .lock_for_transmit()
            .take_transmit_to(&mut out.queue, &mut out.tail);
        if added > 0 {
            self.add_unsent(added);
        }
        added
    }

    pub(super) fn lock_out(&self) -> MutexGuard<'_, Option<Output>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write everything queued, as far as the transport takes it: `Ready` once all of it is
    /// written and flushed, `Pending` when the transport is full (woken through `cx`).
    pub(super) fn poll_output(
        &self,
        out: &mut Output,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        // What the broker holds is collected once per poll, not again after each write: whoever
        // queues while a write is in progress here either finds the output busy and wakes the
        // writer task, or has woken it already, so nothing is left behind.
        if out.is_empty() {
            self.collect_output(out);
        }
        loop {
            let Output {
                wr,
                queue,
                first,
                tail,
                ..
            } = &mut *out;
            let pending = queue.get(*first..).unwrap_or_default();
            let mut n = match (pending, tail.is_empty()) {
                ([], true) => return Pin::new(&mut **wr).poll_flush(cx),
                // One chunk (the usual case for small frames): no slice array to fill.
                ([], false) => ready!(Pin::new(&mut **wr).poll_write(cx, tail))?,
                ([one], true) => ready!(Pin::new(&mut **wr).poll_write(cx, one))?,
                _ => {
                    let mut slices = [io::IoSlice::new(&[]); MAX_IOSLICES];
                    let mut count = 0;
                    let tail = (!tail.is_empty()).then_some(&tail[..]);
                    for (slice, chunk) in slices
                        .iter_mut()
                        .zip(pending.iter().map(|c| &c[..]).chain(tail))
                    {
                        *slice = io::IoSlice::new(chunk);
                        count += 1;
                    }
                    ready!(Pin::new(&mut **wr).poll_write_vectored(cx, &slices[..count]))?
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            self.sub_unsent(n);
            while n > 0 {
                let Some(chunk) = queue.get_mut(*first) else {
                    break;
                };
                if n >= chunk.len() {
                    n -= chunk.len();
                    *first += 1;
                } else {
                    bytes::Buf::advance(chunk, n);
                    n = 0;
                }
            }
            while queue.get(*first).is_some_and(|c| c.is_empty()) {
                *first += 1;
            }
            if n >= tail.len() {
                // Kept at the start of its allocation, which the broker gets back whole.
                tail.clear();
            } else if n > 0 {
                bytes::Buf::advance(tail, n);
            }
        }
    }

    /// The reader handled a batch of frames: write what it produced (answers, and calls that
    /// handlers polled inline made), if anything.
    pub(super) fn end_batch(&self) {
        let mut broker = self.lock();
        broker.in_batch = false;
        if !broker.has_transmit() {
            return;
        }
        // The output is taken under this lock, not collected under a second one.
        let taken = self.take_output(&mut broker);
        drop(broker);
        match taken {
            Some((out, added)) => {
                self.add_unsent(added);
                self.write_now(out);
            }
            None => self.flush_now(),
        }
    }

    /// Write queued output now, from the calling task, without waiting: saves the hop through
    /// the writer task when the transport has room, which it nearly always has. Whatever cannot
    /// be written at once (the transport is full, or another task is writing) is left to the
    /// writer task.
    pub(super) fn flush_now(&self) {
        let Ok(mut guard) = self.out.try_lock() else {
            // Someone is writing; the writer task picks up what we queued.
            self.wake_writer.notify_one();
            return;
        };
        let Some(out) = guard.as_mut() else { return };
        if !out.is_empty() || out.writer_waiting {
            // A write (or a flush: a buffering transport such as TLS takes a write whole and
            // makes the flush wait) is waiting for the transport; its waker belongs to the
            // writer task, and a poll with our no-op waker would replace it. What the broker
            // queued meanwhile joins the queue, so it counts as unsent.
            self.collect_output(out);
            drop(guard);
            self.wake_writer.notify_one();
            return;
        }
        self.write_now(guard);
    }

    /// Write from the output, whose lock the caller took while no write was waiting for the
    /// transport: as far as the transport takes it, the rest left to the writer task.
    pub(super) fn write_now(&self, mut guard: MutexGuard<'_, Option<Output>>) {
        let Some(out) = guard.as_mut() else { return };
        // A no-op waker is enough: on `Pending` the writer task takes over with its own.
        match self.poll_output(out, &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                drop(guard);
                self.wake_writer.notify_one();
            }
            Poll::Ready(Err(e)) => {
                drop(guard);
                self.close(self.io_reason(&e));
            }
        }
    }

    /// For a caller that writes its own call ([`Flush::Caller`]), or the reader at the end of
    /// its batch, holding the broker's lock: the output with what the broker queued moved into
    /// it, if no write is in progress or waiting, and the bytes moved (to count as unsent once
    /// the broker's lock is released). Saves the write path locking the broker again.
    pub(super) fn take_output<'a>(
        &'a self,
        broker: &mut Broker,
    ) -> Option<(MutexGuard<'a, Option<Output>>, usize)> {
        // `try_lock`: whoever holds the output may be waiting for the broker's lock.
        let mut guard = self.out.try_lock().ok()?;
        let out = guard.as_mut()?;
        if !out.is_empty() || out.writer_waiting {
            return None;
        }
        out.queue.clear();
        out.first = 0;
        let added = broker.take_transmit_to(&mut out.queue, &mut out.tail);
        Some((guard, added))
    }

    /// The writer is waiting for the transport: `Ready` with the reason to close once more
    /// than `max_unsent` bytes waited and none went out for `after`.
    pub(super) fn poll_stall(
        &self,
        stall: &mut Option<(Pin<Box<tokio::time::Sleep>>, u64)>,
        after: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<CloseReason> {
        loop {
            let written = self.bytes_out.load(Ordering::Relaxed);
            let (timer, mark) =
                stall.get_or_insert_with(|| (Box::pin(tokio::time::sleep(after)), written));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if written == *mark && self.is_congested() {
                return Poll::Ready(CloseReason::WriteStalled(after));
            }
            // Progress, or little waiting: watch the next period.
            *mark = written;
            timer.as_mut().reset(crate::deadline::after(after));
        }
    }

    /// Count what the broker queued as unsent without writing it; the writer task writes it.
    pub(super) fn collect_now(&self) {
        if let Ok(mut guard) = self.out.try_lock()
            && let Some(out) = guard.as_mut()
        {
            let moved = self.collect_output(out) > 0;
            drop(guard);
            // The broker no longer shows this output, so a flush that looks there (the end of
            // the reader's batch) would miss it: the writer task sends it.
            if moved {
                self.wake_writer.notify_one();
            }
        }
    }

    /// After the close: write what is left, then shut the write half down. Done here when the
    /// writer task never started, nothing is left and the transport shuts down at once (TCP
    /// does), so a short connection never starts the task; by the writer task otherwise.
    pub(super) fn end_output(&self) {
        if !self.wake_writer.is_started()
            && let Ok(mut guard) = self.out.try_lock()
            && let Some(out) = guard.as_mut()
        {
            self.collect_output(out);
            if out.is_empty()
                && Pin::new(&mut *out.wr)
                    .poll_shutdown(&mut Context::from_waker(Waker::noop()))
                    .is_ready()
            {
                *guard = None;
                return;
            }
        }
        self.wake_writer.notify_one();
    }
}
