//! The driver's side of the object model's [`Link`]: what a remote reference, a handler's
//! caller and the public [`Connection`] handle ask of this connection.

use super::*;

impl ConnShared {
    pub(super) fn table_stats(&self) -> TableStats {
        // Fold in queued releases so the counts are exact; the writer sends them.
        let released =
            std::mem::take(&mut *self.releases.lock().unwrap_or_else(|p| p.into_inner()));
        let any = !released.is_empty();
        let stats = {
            let mut broker = self.lock();
            for (id, generation, count) in released {
                broker.release_imported(id, generation, count);
            }
            broker.stats()
        };
        if any {
            self.wake_writer.notify_one();
        }
        stats
    }

    /// Start a graceful close: `None` when it closed at once, otherwise the wait for running
    /// calls to drain and for calls held back to be refused (up to the drain timeout), which
    /// then closes it.
    fn close_gracefully(&self) -> Option<LinkFuture<'_, ()>> {
        // Nothing running or held (the common case): no goodbye, no drain timer and no future
        // to wait on. The end of the stream follows at once and tells the peer; a goodbye
        // matters while calls drain, when the peer must stop sending new ones (which fail
        // with `ShuttingDown`, not lost).
        let (busy, holding) = {
            let mut broker = self.lock();
            let holding = broker.held() > 0;
            let busy = !broker.is_drained();
            broker.start_draining(busy);
            (busy, holding)
        };
        if !busy {
            ConnShared::close(self, CloseReason::Local);
            return None;
        }
        self.wake_writer.notify_one();
        // Calls the reader holds back (read, at the cap on running calls or while the output
        // was congested) are refused with `ShuttingDown` as it hands them to the draining
        // broker: woken for it now, it does not wait for a running call to end.
        if holding {
            self.drained.notify_one();
        }
        Some(Box::pin(async move {
            let drained = async {
                loop {
                    let done = self.call_done.notified();
                    if self.lock().is_drained() {
                        break;
                    }
                    done.await;
                }
            };
            let _ = tokio::time::timeout(self.drain_timeout, drained).await;
            // Marks the connection closed before it returns: nothing to wait for after it.
            ConnShared::close(self, CloseReason::Local);
        }))
    }
}

// Each method names the inherent one it runs in full (`ConnShared::x`), so that none can
// resolve to itself.
impl Link for ConnShared {
    fn id(&self) -> u64 {
        self.id
    }

    fn side(&self) -> Side {
        self.side
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    fn max_depth(&self) -> usize {
        self.max_depth
    }

    fn record(&self) -> &PeerRecord {
        &self.record
    }

    fn wait_to_call(
        &self,
        method_len: usize,
        payload_len: usize,
        refs: usize,
    ) -> Option<LinkFuture<'_, ()>> {
        ConnShared::wait_to_call(self, method_len, payload_len, refs)
    }

    fn start_call(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
        how: (Waker, Option<tokio::time::Instant>, CallExtras),
    ) -> Result<u64, Fault> {
        ConnShared::start_call(self, target, method, payload, refs, how)
    }

    fn poll_answer(&self, id: u64, cx: &mut Context<'_>) -> Poll<crate::object::Received> {
        self.lock().poll_answer(id, cx.waker())
    }

    fn cancel_call(&self, id: u64) {
        ConnShared::cancel_call(self, id)
    }

    fn send_oneway(
        &self,
        target: u64,
        method: &str,
        payload: Payload,
        refs: Vec<ObjectRef>,
        extras: CallExtras,
    ) -> Result<(), Fault> {
        ConnShared::send_oneway(self, target, method, payload, refs, extras)
    }

    fn send_update(&self, object: u64, payload: Bytes, state: &dyn Fn() -> Option<Bytes>) {
        ConnShared::send_update(self, object, payload, state)
    }

    fn is_exported(&self, object: u64) -> bool {
        ConnShared::is_exported(self, object)
    }

    fn queue_release(&self, id: u64, generation: u64, count: u64) {
        ConnShared::queue_release(self, id, generation, count)
    }

    fn revoke_export(&self, object: u64) {
        ConnShared::revoke_export(self, object)
    }

    fn peer_root(self: Arc<Self>) -> ObjectRef {
        ConnShared::root_ref(&self)
    }

    fn set_root(&self, root: Option<ObjectRef>) -> Option<ObjectRef> {
        self.lock().set_root(root)
    }

    fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            tables: self.table_stats(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            unsent_bytes: self.unsent.load(Ordering::Relaxed) as u64,
        }
    }

    fn set_max_frame_len(&self, len: usize) {
        let (len, queued) = {
            let mut broker = self.lock();
            let len = broker.set_max_frame_len(len);
            (len, broker.has_transmit())
        };
        // The reader picks the new limit up before the next frame.
        self.max_frame_len.store(len, Ordering::Relaxed);
        if queued {
            self.wake_writer.notify_one();
        }
    }

    fn peer_limits(&self) -> Option<crate::handshake::ReceiveLimits> {
        Some(self.lock().peer_limits())
    }

    fn own_limits(&self) -> Option<crate::handshake::ReceiveLimits> {
        Some(self.lock().limits().receive())
    }

    fn set_max_call_bytes(&self, bytes: usize) {
        let queued = {
            let mut broker = self.lock();
            broker.set_max_call_bytes(bytes);
            broker.has_transmit()
        };
        if queued {
            self.wake_writer.notify_one();
        }
    }

    fn is_closed(&self) -> bool {
        ConnShared::is_closed(self)
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().cloned()
    }

    fn close_fault(&self) -> Fault {
        ConnShared::close_fault(self)
    }

    fn closed(&self) -> LinkFuture<'_, ()> {
        Box::pin(ConnShared::closed(self))
    }

    fn close(&self) -> Option<LinkFuture<'_, ()>> {
        self.close_gracefully()
    }

    fn abort(&self) {
        ConnShared::close(self, CloseReason::Local)
    }
}
