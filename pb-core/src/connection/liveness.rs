//! Keep-alive glue: pb-proto's [`Liveness`] fed tokio's clock, and what its timeouts do.

use super::*;

/// The reader's timers: when to ping a quiet peer, and when to give up on it (the hello's
/// deadline is added by the reader of a dialed connection).
pub(super) type Timers = LivenessConfig;

/// The driver's clock as pb-proto's explicit `now` (tokio's clock, so paused time works).
pub(super) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The timer fired: ping, give up, or just re-arm.
pub(super) fn on_timer(live: &mut Liveness, conn: &ConnShared) -> Result<(), CloseReason> {
    match live.handle_timeout(now()) {
        Some(Timeout::Idle(after)) => Err(CloseReason::IdleTimeout(after)),
        Some(Timeout::Ping(nonce)) => {
            conn.lock().send_ping(nonce);
            conn.wake_writer.notify_one();
            Ok(())
        }
        None => Ok(()),
    }
}
