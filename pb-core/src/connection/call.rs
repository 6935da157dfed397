//! The call path: a call of ours from the caller to the output, its answer back to the caller,
//! one-way sends and cache updates.

use super::*;

/// The wait for the answer to our call `id`, read from the call's slot in the broker's pending
/// table. Dropped before the answer arrives, it cancels the call.
pub(super) struct Answer<'a> {
    pub(super) conn: &'a ConnShared,
    pub(super) id: u64,
    pub(super) done: bool,
    /// Not polled yet. The first poll is made in the same task poll that started the call
    /// with this task's waker in the slot: nothing to look at or leave there yet.
    pub(super) first: bool,
}

impl Future for Answer<'_> {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        if std::mem::take(&mut self.first) {
            return Poll::Pending;
        }
        let reply = ready!(self.conn.lock().poll_answer(self.id, cx.waker()));
        self.done = true;
        Poll::Ready(reply)
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if !self.done {
            // An answer that arrived meanwhile is dropped here, outside the lock.
            let unwanted = self.conn.lock().cancel_call(self.id);
            drop(unwanted);
            self.conn.wake_writer.notify_one();
        }
    }
}

impl ConnShared {
    /// Completes once a call of this size may be started: at once if the peer's hello has
    /// arrived or the call is within the floor any peer accepts; otherwise when the hello
    /// arrives or the connection closes (after which `start_call` decides).
    ///
    /// Only a dialed connection waits: it sends its first calls without waiting for the peer's
    /// hello (one round trip for connecting and calling). Those calls cannot be checked
    /// against limits the peer has not announced yet, and sending them unchecked could cost
    /// the connection; refusing those over the floor would fail calls the peer would take.
    /// So a call within [`ReceiveLimits::FLOOR`](crate::handshake::ReceiveLimits::FLOOR),
    /// which every pb peer accepts, leaves at once, and a larger one waits one round trip, for
    /// the hello, then is sent or refused against the peer's own limits.
    pub(super) async fn peer_limits_for(&self, method_len: usize, payload_len: usize, refs: usize) {
        if pb_proto::broker::fits_floor(method_len, payload_len, refs) {
            return;
        }
        loop {
            let notified = self.peer_hello.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.peer_known.load(Ordering::Acquire) || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Call the peer's object `target` and wait for the reply.
    pub(crate) async fn call(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
    ) -> Reply {
        let span = tracing::debug_span!(
            "pb.call",
            direction = "out",
            connection = self.id,
            peer = tracing::field::Empty,
            request_id = tracing::field::Empty,
            object = target,
            method,
            outcome = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        // Without a subscriber that wants it (the usual case) the span is disabled, and the
        // call pays for no tracing beyond this check.
        let traced = !span.is_disabled();
        let started = traced.then(|| {
            if let Some(addr) = self.peer_addr {
                span.record("peer", tracing::field::display(addr));
            }
            std::time::Instant::now()
        });
        // One async body, entered in the span (as `instrument` would) only when traced: an
        // inner async fn per case would cost a nested future and its moves on every call.
        let reply = 'call: {
            let deadline = crate::deadline::current();
            if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                break 'call Err(deadline_fault());
            }
            if self.is_congested() {
                // Backpressure: the peer is not taking what we already queued for it.
                let space = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, self.output_space())
                            .await
                            .map_err(|_| deadline_fault()),
                        None => {
                            self.output_space().await;
                            Ok(())
                        }
                    }
                };
                if let Err(f) = space.instrument(span.clone()).await {
                    break 'call Err(f);
                }
            }
            if !self.peer_known.load(Ordering::Acquire) {
                let known =
                    self.peer_limits_for(method.len(), payload.as_slice().len(), refs.len());
                let known = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, known)
                            .await
                            .map_err(|_| deadline_fault()),
                        None => {
                            known.await;
                            Ok(())
                        }
                    }
                };
                if let Err(f) = known.instrument(span.clone()).await {
                    break 'call Err(f);
                }
            }
            // The task's waker goes into the call's slot at once, so the first poll of the
            // answer need not take the lock to leave it there.
            let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
            let id = {
                let _entered = traced.then(|| span.enter());
                let mut events = Vec::new();
                let queued_call = {
                    let mut broker = self.lock();
                    let queued = broker
                        .start_call(
                            target,
                            method,
                            payload,
                            &refs,
                            (Some(waker), deadline.map(crate::deadline::remaining_ms)),
                        )
                        .map(|id| match broker.who_flushes() {
                            // A lone caller writes its call itself, taking the output while
                            // it holds the broker's lock.
                            Flush::Caller => match self.take_output(&mut broker) {
                                Some(taken) => (id, 0, Flush::Caller, Some(taken)),
                                None => (id, broker.queued_bytes(), Flush::Caller, None),
                            },
                            flush => (id, broker.queued_bytes(), flush, None),
                        });
                    broker.poll_events(&mut events);
                    queued
                };
                drop(refs);
                // The hooks of objects exported by the call, outside the broker's lock.
                self.act(&mut events);
                match queued_call {
                    Ok((id, queued, flush, taken)) => {
                        span.record("request_id", id);
                        match taken {
                            Some((out, added)) => {
                                if added > 0 {
                                    self.add_unsent(added);
                                }
                                self.write_now(out);
                            }
                            None => {
                                self.note_queued(queued);
                                self.after_queueing(flush);
                            }
                        }
                        id
                    }
                    Err(f) => break 'call Err(f),
                }
            };
            let answer = Answer {
                conn: self,
                id,
                done: false,
                first: true,
            };
            // On expiry the answer's future is dropped, which cancels the call on the peer.
            match (deadline, traced) {
                (None, false) => answer.await,
                (None, true) => answer.instrument(span.clone()).await,
                (Some(d), false) => tokio::time::timeout_at(d, answer)
                    .await
                    .unwrap_or_else(|_| Err(deadline_fault())),
                (Some(d), true) => tokio::time::timeout_at(d, answer)
                    .instrument(span.clone())
                    .await
                    .unwrap_or_else(|_| Err(deadline_fault())),
            }
        };
        if let Some(started) = started {
            span.record("outcome", outcome_name(Some(&reply)));
            span.record("duration_us", started.elapsed().as_micros() as u64);
        }
        reply
    }

    /// A caller queued a call: write it now, or leave it to the reader's or the writer task's
    /// next write (see [`Broker::who_flushes`]).
    pub(super) fn after_queueing(&self, flush: Flush) {
        match flush {
            Flush::Caller => self.flush_now(),
            Flush::Writer => self.wake_writer.notify_one(),
            Flush::Reader => {}
        }
    }

    /// Send a cache update to the peer, if the cache is still exported to it.
    pub(crate) fn send_update(&self, object: u64, payload: Bytes) {
        if self.lock().send_update(object, payload) {
            self.wake_writer.notify_one();
        }
    }

    /// Send a call that wants no answer.
    pub(crate) fn send_oneway(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
    ) -> Result<(), Fault> {
        self.with_broker(|b| b.start_call(target, method, payload, &refs, (None, None)))?;
        self.wake_writer.notify_one();
        Ok(())
    }
}
