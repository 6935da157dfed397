//! The call path: a call of ours from the caller to the output (the steps of the object
//! model's `object/call.rs` that need the connection), one-way sends and cache updates.

use super::*;
use crate::link::UPDATE_BACKLOG;

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

    /// `None` when a call of this size may be started now; otherwise a wait for room in the
    /// congested output, then for the peer's limits if the call needs them (see
    /// [`ConnShared::peer_limits_for`]).
    pub(super) fn wait_to_call(
        &self,
        method_len: usize,
        payload_len: usize,
        refs: usize,
    ) -> Option<LinkFuture<'_, ()>> {
        let congested = self.is_congested();
        let unknown = !self.peer_known.load(Ordering::Acquire)
            && !pb_proto::broker::fits_floor(method_len, payload_len, refs);
        if !congested && !unknown {
            return None;
        }
        Some(Box::pin(async move {
            if congested {
                // Backpressure: the peer is not taking what we already queued for it.
                self.output_space().await;
            }
            self.peer_limits_for(method_len, payload_len, refs).await;
        }))
    }

    /// Start our call: queue it in the broker and write it (or leave it to whoever writes
    /// next); returns its request id.
    pub(super) fn start_call(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
        (waker, deadline, extras): (Waker, Option<tokio::time::Instant>, CallExtras),
    ) -> Result<u64, Fault> {
        let mut events = Vec::new();
        let queued_call = {
            let mut broker = self.lock();
            let queued = broker
                .start_call(
                    target,
                    method,
                    payload,
                    &refs,
                    (
                        Some(waker),
                        deadline.map(crate::deadline::remaining_ms),
                        extras,
                    ),
                )
                .map(|id| match broker.who_flushes() {
                    // A lone caller writes its call itself, taking the output while it holds
                    // the broker's lock.
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
        let (id, queued, flush, taken) = queued_call?;
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
        Ok(id)
    }

    /// Our call `id` is no longer wanted: cancel it (the peer hears of it).
    pub(super) fn cancel_call(&self, id: u64) {
        // An answer that arrived meanwhile is dropped here, outside the lock; so are the
        // objects a call that never left would have sent (its exports given back).
        let unwanted = self.with_broker(|broker| broker.cancel_call(id));
        drop(unwanted);
        self.wake_writer.notify_one();
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

    /// Send a cache update to the peer, if the cache is still exported to it. An update over
    /// the peer's frame goes as the cache's whole `state` instead (which puts the replica back
    /// in sync). If neither fits, or if more than [`UPDATE_BACKLOG`] times `max_unsent_bytes`
    /// already waits unsent to the peer when an update comes (it reads too slowly to follow),
    /// the update is not queued and the connection is cut ([`CloseReason::CacheBehind`]): its
    /// replica must not go silently stale, nor its backlog grow without bound.
    pub(crate) fn send_update(
        &self,
        object: u64,
        payload: Bytes,
        state: &dyn Fn() -> Option<Bytes>,
    ) {
        // The common case, an update that fits and no backlog, takes the broker's lock once.
        let waiting = {
            let mut broker = self.lock();
            if !broker.is_exported(object) {
                return;
            }
            let waiting = broker.queued_bytes() + self.unsent.load(Ordering::Relaxed);
            let fits = broker.update_fits(payload.len());
            if fits && waiting <= UPDATE_BACKLOG.saturating_mul(self.max_unsent) {
                let sent = broker.send_update(object, payload);
                drop(broker);
                if sent {
                    self.wake_writer.notify_one();
                }
                return;
            }
            waiting
        };
        if waiting > UPDATE_BACKLOG.saturating_mul(self.max_unsent) {
            return self.cut_behind(format!(
                "{waiting} bytes wait unsent to a peer that observes a cache, over \
                 {UPDATE_BACKLOG} times max_unsent_bytes ({})",
                self.max_unsent
            ));
        }
        // The update is over the peer's frame: the cache's whole state instead.
        let len = payload.len();
        let Some(state) = state().filter(|s| self.lock().update_fits(s.len())) else {
            return self.cut_behind(format!(
                "a cache update of {len} bytes, and the cache's whole state, are over the \
                 peer's max_frame_len"
            ));
        };
        if self.lock().send_update(object, state) {
            self.wake_writer.notify_one();
        }
    }

    /// Cut the connection, which cannot follow a cache ([`CloseReason::CacheBehind`]), from a
    /// task of its own: the caller holds the cache's lock, and closing runs user code (export
    /// hooks, drops) that may update that very cache.
    fn cut_behind(&self, why: String) {
        tracing::warn!(connection = self.id, %why, "closing connection");
        let Some(me) = self.me.upgrade() else { return };
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone());
        match runtime {
            Some(runtime) => {
                runtime.spawn(async move { me.close(CloseReason::CacheBehind(why)) });
            }
            // No runtime to run it on (a connection made outside one, updated from a thread
            // of its own): closed here, as nothing else can.
            None => me.close(CloseReason::CacheBehind(why)),
        }
    }

    /// Send a call that wants no answer.
    pub(crate) fn send_oneway(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
        extras: CallExtras,
    ) -> Result<(), Fault> {
        self.with_broker(|b| b.start_call(target, method, payload, &refs, (None, None, extras)))?;
        self.wake_writer.notify_one();
        Ok(())
    }
}
