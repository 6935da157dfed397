//! The public [`Connection`] handle and its statistics.

use super::*;

/// A live counter snapshot of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    /// Table sizes.
    pub tables: TableStats,
    /// Bytes received, frames and headers included.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes queued for the peer and not yet written.
    pub unsent_bytes: u64,
}

/// A pb connection: symmetric, either side may call objects the other gave it.
///
/// Cheap to clone. The connection stays open until [`Connection::close`] is called, the peer
/// closes it, or it fails; dropping the handles does not close it while the peer keeps it open.
#[derive(Clone)]
pub struct Connection {
    pub(super) shared: Arc<ConnShared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("side", &self.shared.side)
            .field("peer_addr", &self.shared.peer_addr)
            .finish()
    }
}

impl ConnShared {
    pub(super) fn stats(&self) -> TableStats {
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
}

impl Connection {
    pub(crate) fn from_shared(shared: Arc<ConnShared>) -> Connection {
        Connection { shared }
    }

    /// The peer's root object, typed.
    pub fn root<R: Remote>(&self) -> R {
        R::from_object_ref(self.shared.root_ref())
    }

    /// The peer's root object, untyped.
    pub fn root_ref(&self) -> ObjectRef {
        self.shared.root_ref()
    }

    /// Replace the object we serve as our root; returns the previous one.
    pub fn set_root(&self, root: Option<ObjectRef>) -> Option<ObjectRef> {
        self.shared.lock().set_root(root)
    }

    /// The nesting-depth limit for values decoded from this connection.
    pub(crate) fn max_depth(&self) -> usize {
        self.shared.max_depth
    }

    /// A process-unique id of this connection.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Which side we are.
    pub fn side(&self) -> Side {
        self.shared.side
    }

    /// The peer's address, when the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared.peer_addr
    }

    /// The connection's live counters: table sizes and bytes in and out.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            tables: self.shared.stats(),
            bytes_in: self.shared.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.shared.bytes_out.load(Ordering::Relaxed),
            unsent_bytes: self.shared.unsent.load(Ordering::Relaxed) as u64,
        }
    }

    /// Change the largest frame accepted and sent (for example after login); never below
    /// [`ReceiveLimits::FLOOR`](crate::handshake::ReceiveLimits::FLOOR). A peer that announced
    /// its own limits in its hello is told at once, so that it may send frames up to the new
    /// limit (and, if it is lower, holds what it sends to it from when it hears of it: frames
    /// already on their way that exceed it close the connection).
    pub fn set_max_frame_len(&self, len: usize) {
        let (len, queued) = {
            let mut broker = self.shared.lock();
            let len = broker.set_max_frame_len(len);
            (len, broker.has_transmit())
        };
        // The reader picks the new limit up before the next frame.
        self.shared.max_frame_len.store(len, Ordering::Relaxed);
        if queued {
            self.shared.wake_writer.notify_one();
        }
    }

    /// Record who the peer is (a login, a certificate, ...). Dispatchers see it through
    /// [`Caller::identity`]. One value is kept per type: a value of a type recorded already
    /// replaces it, and values of other types stay (pb's login records a
    /// [`crate::Identity`]; an application can record its own beside it).
    pub fn set_identity<T: Any + Send + Sync>(&self, identity: T) {
        let mut ids = self
            .shared
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ids.retain(|id| !id.is::<T>());
        ids.push(Arc::new(identity));
    }

    /// The identity of type `T` recorded with [`Connection::set_identity`], if any.
    pub fn identity<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let id = self
            .shared
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|id| id.is::<T>())
            .cloned()?;
        id.downcast::<T>().ok()
    }

    /// Forget the identity of type `T`, if one was recorded.
    pub fn forget_identity<T: Any + Send + Sync>(&self) {
        self.shared
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| !id.is::<T>());
    }

    /// Record the avatar the peer logged in as (the portal does), for [`Caller::avatar`]. It is
    /// kept while the connection lives, or until replaced.
    pub fn set_avatar(&self, avatar: ObjectRef) {
        let old = self
            .shared
            .avatar
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(avatar);
        // Dropped outside the lock: its drop may run user code.
        drop(old);
    }

    /// The avatar recorded with [`Connection::set_avatar`], as a `R` (no check is made that
    /// it implements `R`'s interface: a call to a method it lacks fails with `NoSuchMethod`).
    pub fn avatar<R: Remote>(&self) -> Option<R> {
        let avatar = self
            .shared
            .avatar
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(R::from_object_ref(avatar))
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason.get().cloned()
    }

    /// Completes when the connection ends (at once if it has). Every waiter is woken exactly
    /// once per connection.
    pub async fn closed(&self) {
        self.shared.closed().await
    }

    /// Close gracefully: take no new calls, let running calls finish and their answers go out
    /// (up to the drain timeout), then close. Our own pending calls fail with `Disconnected`.
    pub async fn close(&self) {
        let shared = &self.shared;
        // Nothing running (the common case): no goodbye and no drain timer. The end of the
        // stream follows at once and tells the peer; a goodbye matters while calls drain, when
        // the peer must stop sending new ones (which fail with `ShuttingDown`, not lost).
        let busy = {
            let mut broker = shared.lock();
            let busy = broker.in_flight() > 0;
            broker.start_draining(busy);
            busy
        };
        if busy {
            shared.wake_writer.notify_one();
            let drained = async {
                loop {
                    let done = shared.call_done.notified();
                    if shared.lock().in_flight() == 0 {
                        break;
                    }
                    done.await;
                }
            };
            let _ = tokio::time::timeout(shared.drain_timeout, drained).await;
        }
        // Marks the connection closed before it returns: nothing to wait for after it.
        shared.close(CloseReason::Local);
    }

    /// Close at once: running calls are cancelled, pending calls fail.
    pub fn abort(&self) {
        self.shared.close(CloseReason::Local);
    }
}
