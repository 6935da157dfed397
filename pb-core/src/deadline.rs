//! Deadlines: how long calls made in a scope may take, carried to the callee and inherited by
//! the calls it makes in turn.
//!
//! A deadline is a task-local scope, not a per-call argument, so that a handler's onward calls
//! inherit its caller's deadline without passing it by hand. On the wire it travels as the time
//! remaining in milliseconds, so the two machines' clocks need not agree. The caller enforces it
//! itself: a call whose deadline passes fails with [`CallError::DeadlineExceeded`] and is
//! cancelled, even if the peer never answers.
//!
//! A call to an object in this process is bound the same way: the handler runs inside the
//! deadline (visible as `Caller::deadline`), is dropped when it passes, and the call fails with
//! [`CallError::DeadlineExceeded`]; a deadline already passed fails the call without running
//! the handler. A call behaves the same whichever side its object lives on.
//!
//! [`CallError::DeadlineExceeded`]: crate::CallError::DeadlineExceeded

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    /// `None` inside [`without`]: no deadline there, whatever is in force around it.
    static DEADLINE: Option<Instant>;
}

/// Run `fut` with calls made in it bound by `deadline` (or by an earlier deadline already in
/// force).
pub async fn with_deadline<F: Future>(deadline: Instant, fut: F) -> F::Output {
    let deadline = current().map_or(deadline, |d| d.min(deadline));
    DEADLINE.scope(Some(deadline), fut).await
}

/// Run `fut` with calls made in it bound to finish within `timeout` from now (a timeout past
/// what the clock can reach, such as `Duration::MAX`, is a deadline decades away, as tokio's
/// `timeout` takes it).
pub async fn with_timeout<F: Future>(timeout: Duration, fut: F) -> F::Output {
    with_deadline(after(timeout), fut).await
}

/// How far away [`after`] puts an instant the clock cannot reach: about 30 years, as tokio does.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `timeout` from now, or, if the clock cannot reach it (`Duration::MAX`), about 30
/// years from now: a timeout too long to reach never fires, where adding it would panic.
pub fn after(timeout: Duration) -> Instant {
    after_from(Instant::now(), timeout)
}

/// The instant `timeout` after `start`, as [`after`] takes it from now.
pub(crate) fn after_from(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + FAR_FUTURE)
}

/// The deadline in force for calls made here, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// Run `fut` under `deadline` if there is one.
pub(crate) async fn maybe_scope<F: Future>(deadline: Option<Instant>, fut: F) -> F::Output {
    match deadline {
        Some(d) => DEADLINE.scope(Some(d), fut).await,
        None => fut.await,
    }
}

/// Run `fut` with no deadline for the calls made in it, whatever deadline is in force around
/// it: for work that must not be cut short by a deadline meant for the wait around it (a
/// stream's pull, which the next read resumes).
pub(crate) async fn without<F: Future>(fut: F) -> F::Output {
    DEADLINE.scope(None, fut).await
}

/// The fault of a call whose deadline passed (or had passed when it was made).
pub(crate) fn deadline_fault() -> pb_proto::broker::Fault {
    pb_proto::broker::Fault {
        kind: pb_proto::message::FaultKind::DeadlineExceeded,
        message: "the call's deadline passed".into(),
    }
}

/// Milliseconds left until `deadline`, rounded up so that a call never travels with zero.
pub(crate) fn remaining_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_millis().min(u128::from(u64::MAX)) as u64;
    if Duration::from_millis(ms) < left {
        // Saturating: a deadline more than `u64::MAX` ms away (a `with_deadline` instant
        // hundreds of millions of years out) travels as the most there is.
        ms.saturating_add(1)
    } else {
        ms.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_is_rounded_up_and_never_overflows() {
        let now = Instant::now();
        let far = Duration::from_millis(u64::MAX) + Duration::from_secs(1);
        // Where the platform's clock reaches that far (it does on Linux).
        if let Some(deadline) = now.checked_add(far) {
            assert_eq!(remaining_ms(deadline), u64::MAX);
        }
        assert!(remaining_ms(now + Duration::from_micros(1500)) >= 1);
        assert_eq!(remaining_ms(now), 1, "a call never travels with zero");
    }
}
