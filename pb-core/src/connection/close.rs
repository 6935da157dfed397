//! Closing: what calls fail with, and the end of a connection (tables emptied, waiters woken,
//! the output shut down).

use super::*;

/// What calls that fail because the connection ended for `reason` report.
pub(super) fn fault_of(reason: &CloseReason) -> Fault {
    match reason {
        CloseReason::Handshake(e) => Fault {
            kind: FaultKind::Handshake,
            message: e.to_string(),
        },
        _ => Fault::disconnected(),
    }
}

impl ConnShared {
    /// What the transport's error `e` closes the connection as: before the peer's hello, a
    /// reset, an abort, a broken pipe or an early end is the peer closing it.
    pub(super) fn io_reason(&self, e: &std::io::Error) -> CloseReason {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        if !self.peer_known.load(Ordering::Acquire)
            && matches!(
                e.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            )
        {
            return CloseReason::PeerClosed;
        }
        CloseReason::Io(e.to_string())
    }

    /// The fault of a call that fails because the connection has ended.
    pub(crate) fn close_fault(&self) -> Fault {
        match self.close_reason.get() {
            Some(reason) => fault_of(reason),
            None => Fault::disconnected(),
        }
    }

    /// Mark the connection closed and fail everything pending. Only the first close does
    /// anything (the reader, seeing a local close, calls it again).
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        // A dialed connection whose peer hung up (or reset it) before its hello arrived was
        // not talking to a pb server: its calls fail with that, not a bare disconnection; one
        // that failed otherwise (a TLS server's alert) fails with why.
        let reason = match reason {
            CloseReason::PeerClosed if !self.peer_known.load(Ordering::Acquire) => {
                CloseReason::Handshake(HandshakeError::ClosedBeforeHello)
            }
            CloseReason::Io(why) if !self.peer_known.load(Ordering::Acquire) => {
                CloseReason::Handshake(HandshakeError::FailedBeforeHello(why))
            }
            reason => reason,
        };
        // Callers still waiting find their calls gone, and fail with the close's fault; every
        // reference imported on this connection is dead, and forwards of them that we export
        // to other peers are revoked there; our exports end (their hooks run).
        self.with_broker(|broker| broker.close(fault_of(&reason)));
        let _ = self.close_reason.set(reason);
        self.is_closed.store(true, Ordering::Release);
        // After the store: a root handle made from now on is dead as it is made (and a forward
        // of it revoked as it is exported), and one made before is in the list.
        self.revoke_root();
        // What the application recorded of the peer may hold this connection (an avatar that
        // keeps the client's mind, a reference imported here): let go of it, or neither is
        // ever freed. After the exports ended, so that the logout hooks of avatars (which run
        // on tasks of their own) have been started by then.
        self.record.forget();
        self.closed.notify_waiters();
        // A graceful close waiting for running and held calls to drain: none is left.
        self.call_done.notify_waiters();
        // Callers waiting for the peer's hello give up. Only a connection whose peer's hello
        // has not come can have any: its arrival woke those before it, and later ones see it.
        if !self.peer_known.load(Ordering::Acquire) {
            self.peer_hello.notify_waiters();
        }
        self.end_output();
        // Callers waiting for output space give up now. Only a congested output has any: they
        // wait only after seeing it congested, and its end wakes them.
        if self.is_congested() {
            self.space.notify_waiters();
        }
    }
}

/// Closes its connection if the task that holds it unwinds (a panic in the reader, in pb's code
/// or in user code it runs): a connection whose frames nobody reads any more would otherwise
/// never answer its calls, nor end, nor give back what its tables hold.
pub(super) struct CloseOnPanic<'a>(pub(super) &'a ConnShared);

impl Drop for CloseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                connection = self.0.id,
                "closing connection: its reader panicked"
            );
            self.0.close(CloseReason::Local);
        }
    }
}
