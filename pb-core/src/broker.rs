//! The driver's side of the broker: pb-proto's [`pb_proto::broker::Broker`] over pb-core's
//! objects.
//!
//! The protocol's state (tables, request ids, limits, the queued output) and every decision
//! about it are pb-proto's; this file names the tokens it holds ([`Driver`]: an exported
//! object is an [`ObjectRef`], an import a weak handle to [`Imported`], a waiting caller its
//! [`Waker`], a running call's cancellation a `oneshot` sender), and keeps the one piece of
//! state that belongs to the driver: who writes the output a caller queued (`in_batch`,
//! [`Broker::who_flushes`]). What the broker's events make the driver do (wake callers, run
//! object hooks, mark references dead) is in `connection/events.rs`, outside the lock.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};
use std::task::Waker;

use bytes::Bytes;
use pb_proto::broker::{Incoming, Sending, Tokens};
use tokio::sync::oneshot;

use crate::link::Imported;
use crate::object::{ObjectRef, RefInner};
pub use pb_proto::limits::{Limits, ProtocolError, TableStats};

/// The driver's tokens, as pb-proto's broker holds them.
pub(crate) enum Driver {}

impl Tokens for Driver {
    type Object = ObjectRef;
    type Import = Weak<Imported>;
    type Waiter = Waker;
    type Watch = oneshot::Sender<()>;

    #[inline]
    fn classify(object: &ObjectRef, conn: u64) -> Sending {
        match &object.0 {
            RefInner::Remote(imp) if imp.connection == conn => Sending::Returned(imp.id),
            RefInner::Remote(imp) => Sending::Exported(Arc::as_ptr(imp) as usize),
            RefInner::Local(d) => Sending::Exported(Arc::as_ptr(d) as *const () as usize),
        }
    }

    /// tokio's clock, so that a paused clock holds for parked calls' deadlines too.
    fn now() -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    #[inline]
    fn receive_again(import: &Weak<Imported>) -> Option<ObjectRef> {
        let h = import.upgrade()?;
        h.add_received();
        Some(ObjectRef(RefInner::Remote(h)))
    }
}

/// What the broker tells the driver to do.
pub(crate) type Event = pb_proto::broker::Event<Driver>;

/// An incoming call for the driver to run.
pub(crate) type CallEvent = Incoming<ObjectRef>;

pub(crate) use pb_proto::broker::State;

/// Who writes output that a caller queued (see [`Broker::who_flushes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// The caller, at once.
    Caller,
    /// The reader, at the end of the batch it is handling.
    Reader,
    /// The writer task.
    Writer,
}

/// One connection's broker, with the driver's note of who flushes.
pub(crate) struct Broker {
    core: pb_proto::broker::Broker<Driver>,
    /// The reader is handling a batch of frames and flushes once it is done.
    pub(crate) in_batch: bool,
}

impl Deref for Broker {
    type Target = pb_proto::broker::Broker<Driver>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.core
    }
}

impl DerefMut for Broker {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.core
    }
}

impl Broker {
    pub(crate) fn new(limits: Limits, conn_id: u64, root: Option<ObjectRef>) -> Broker {
        Broker {
            core: pb_proto::broker::Broker::new(limits, conn_id, root),
            in_batch: false,
        }
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
        } else if self.core.pending_calls() <= 1 {
            Flush::Caller
        } else {
            Flush::Writer
        }
    }
}

impl Broker {
    /// The caller of call `id` polls for its answer with its waker (kept, unless the one
    /// there wakes the same task, until the answer arrives).
    #[inline]
    pub(crate) fn poll_answer(
        &mut self,
        id: u64,
        waker: &Waker,
    ) -> std::task::Poll<crate::object::Received> {
        self.core.poll_answer(id, |w| match w {
            Some(w) if w.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        })
    }

    /// Hand over the output (see [`pb_proto::broker::Broker::poll_transmit`]); whatever a
    /// reader's batch queued goes out with it.
    #[inline]
    pub(crate) fn take_transmit_to(
        &mut self,
        into: &mut Vec<Bytes>,
        tail: &mut bytes::BytesMut,
    ) -> usize {
        self.in_batch = false;
        self.core.poll_transmit(into, tail)
    }

    /// Append the frames to write to `into`, in order.
    #[cfg(test)]
    pub(crate) fn take_transmit(&mut self, into: &mut Vec<Bytes>) {
        let mut tail = bytes::BytesMut::new();
        self.take_transmit_to(into, &mut tail);
        if !tail.is_empty() {
            into.push(tail.freeze());
        }
    }
}

/// The most entries a release list keeps room for between batches (16 KiB or 24 KiB).
pub(crate) const KEEP_RELEASES: usize = 1024;
