//! A call to a remote object, from the caller to its [`Link`] and the answer back: the
//! deadline, the wait for room (backpressure, or the peer's limits), the trace span, and the
//! wait for the answer. The link does the protocol's part in three synchronous steps (start,
//! poll the answer, cancel), so a call allocates no future of its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tracing::Instrument;

use super::codec::Payload;
use super::link::Link;
use super::{ObjectRef, Received};
use crate::deadline::{self, deadline_fault};
use crate::trace;
use pb_proto::message::{CallExtras, FaultKind};

/// How a call ended, for tracing.
pub(crate) fn outcome_name<P>(
    reply: Option<&Result<pb_proto::broker::Outcome<ObjectRef, P>, pb_proto::broker::Fault>>,
) -> &'static str {
    match reply {
        None => "cancelled",
        Some(Ok(o)) if o.ok => "ok",
        Some(Ok(_)) => "error",
        Some(Err(f)) => match f.kind {
            FaultKind::NoSuchObject => "no_such_object",
            FaultKind::NoSuchMethod => "no_such_method",
            FaultKind::BadArguments => "bad_arguments",
            FaultKind::BadAnswer => "bad_answer",
            FaultKind::LimitExceeded => "limit_exceeded",
            FaultKind::ShuttingDown => "shutting_down",
            FaultKind::Refused => "refused",
            FaultKind::Disconnected => "disconnected",
            FaultKind::DeadlineExceeded => "deadline_exceeded",
            FaultKind::Handshake => "handshake",
            FaultKind::Cancelled => "cancelled",
            // Internal, Unknown, and kinds added to the wire later.
            _ => "internal",
        },
    }
}

/// The wait for the answer to our call `id`. Dropped before the answer arrives, it cancels
/// the call.
struct Answer<'a> {
    link: &'a dyn Link,
    id: u64,
    done: bool,
    /// Not polled yet. The first poll is made in the same task poll that started the call
    /// with this task's waker in the call's slot: nothing to look at or leave there yet.
    first: bool,
}

impl Future for Answer<'_> {
    type Output = Received;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Received> {
        if std::mem::take(&mut self.first) {
            return Poll::Pending;
        }
        let reply = ready!(self.link.poll_answer(self.id, cx));
        self.done = true;
        Poll::Ready(reply)
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.link.cancel_call(self.id);
        }
    }
}

/// Call the peer's object `target` over `link` and wait for the reply.
pub(crate) async fn call(
    link: &dyn Link,
    target: u64,
    method: &str,
    payload: Payload,
    refs: Vec<ObjectRef>,
    extras: CallExtras,
) -> Received {
    let span = tracing::debug_span!(
        "pb.call",
        direction = "out",
        connection = link.id(),
        peer = tracing::field::Empty,
        request_id = tracing::field::Empty,
        object = target,
        method,
        outcome = tracing::field::Empty,
        duration_us = tracing::field::Empty,
    );
    // Without a subscriber that wants it (the usual case) the span is disabled, and the call
    // pays for no tracing beyond this check.
    let traced = !span.is_disabled();
    let started = traced.then(|| {
        if let Some(addr) = link.peer_addr() {
            span.record("peer", tracing::field::display(addr));
        }
        std::time::Instant::now()
    });
    // Records the outcome and duration as the call ends, however it ends: a caller that drops
    // the call's future (a timeout of its own, a `select!`) leaves it `cancelled`.
    let mut recorded = Recorded {
        span: &span,
        started,
        outcome: "cancelled",
    };
    // One async body, entered in the span (as `instrument` would) only when traced: an inner
    // async fn per case would cost a nested future and its moves on every call.
    let reply = 'call: {
        let deadline = deadline::current();
        if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            break 'call Err(deadline_fault());
        }
        // Backpressure, or a large call on a dialed connection before the peer's limits are
        // known: wait (within the deadline) until the call may be started.
        if let Some(wait) = link.wait_to_call(method.len(), payload.len(), refs.len()) {
            let wait = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, wait)
                        .await
                        .map_err(|_| deadline_fault()),
                    None => {
                        wait.await;
                        Ok(())
                    }
                }
            };
            if let Err(f) = wait.instrument(span.clone()).await {
                break 'call Err(f);
            }
        }
        // The trace context of the span the call is made in (its own when it is recorded); a
        // call forwarded keeps its caller's.
        let extras = CallExtras {
            trace: extras.trace.or_else(|| {
                let _entered = traced.then(|| span.enter());
                trace::outgoing()
            }),
            ..extras
        };
        // The task's waker goes into the call's slot at once, so the first poll of the answer
        // need not take the lock to leave it there.
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let started_call = {
            let _entered = traced.then(|| span.enter());
            link.start_call(target, method, payload, refs, (waker, deadline, extras))
        };
        let id = match started_call {
            Ok(id) => id,
            Err(f) => break 'call Err(f),
        };
        span.record("request_id", id);
        let answer = Answer {
            link,
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
    recorded.outcome = outcome_name(Some(&reply));
    reply
}

/// A traced call's outcome and duration, recorded on its span when this drops.
struct Recorded<'a> {
    span: &'a tracing::Span,
    started: Option<std::time::Instant>,
    outcome: &'static str,
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            self.span.record("outcome", self.outcome);
            self.span
                .record("duration_us", started.elapsed().as_micros() as u64);
        }
    }
}
