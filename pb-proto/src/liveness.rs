//! Keep-alive and idle timing of one connection, driven by an explicit `now`.
//!
//! Only complete frames count as signs of life: the bytes of a frame that never completes do
//! not, so a peer that trickles a frame in byte by byte is as idle as a silent one. The driver
//! tells the machine when frames arrive ([`Liveness::handle_frame`]), sleeps until
//! [`Liveness::poll_timeout`], and then asks [`Liveness::handle_timeout`] what to do.
//!
//! ```text
//! quiet ──keepalive──▶ ping sent ──idle──▶ closed (IdleTimeout)
//!   ▲                      │
//!   └────── any frame ─────┘
//! hello awaited ──handshake timeout──▶ closed       (only before the peer's hello)
//! ```

use std::time::{Duration, Instant};

/// How long a connection may be quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LivenessConfig {
    /// Send a ping after this long without a complete frame (`None`: never).
    pub keepalive: Option<Duration>,
    /// Close after this long without a complete frame (`None`: never).
    pub idle: Option<Duration>,
    /// While the peer's hello is awaited, close after this long without it (`None`: the hello
    /// is not awaited here).
    pub hello: Option<Duration>,
}

/// What the driver must do when the timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Send a ping with this nonce (the peer answers with a pong of the same nonce).
    Ping(u64),
    /// The peer was quiet for this long, a limit: close the connection.
    Idle(Duration),
}

/// The keep-alive state of one connection. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Liveness {
    config: LivenessConfig,
    last_frame: Instant,
    ping_sent: bool,
    nonce: u64,
}

/// Far enough to mean never, near enough not to overflow an `Instant` (about 30 years, as
/// tokio's far future): a longer timeout, such as `Duration::MAX`, is armed this far away.
const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Liveness {
    /// A connection that starts now.
    #[inline]
    pub fn new(config: LivenessConfig, now: Instant) -> Liveness {
        Liveness {
            config,
            last_frame: now,
            ping_sent: false,
            nonce: 0,
        }
    }

    /// Whether any timer is set at all (if not, the driver need not arm one).
    #[inline]
    pub fn is_enabled(&self) -> bool {
        let c = &self.config;
        c.keepalive.is_some() || c.idle.is_some() || c.hello.is_some()
    }

    /// The peer's hello arrived and was accepted: the handshake timeout no longer applies.
    #[inline]
    pub fn handle_hello(&mut self, now: Instant) {
        self.config.hello = None;
        self.handle_frame(now);
    }

    /// A complete frame arrived (or the driver chose not to read, which is not the peer's
    /// silence).
    #[inline]
    pub fn handle_frame(&mut self, now: Instant) {
        self.last_frame = now;
        self.ping_sent = false;
    }

    /// When the timer should next fire. The timer may be reset lazily: a frame moves the
    /// deadline later, and a timer that fires early is answered by re-arming.
    ///
    /// Never panics, whatever the timeouts and `now`s: a timeout longer than about 30 years is
    /// armed that far away (and re-armed if it fires), and past the last `Instant` the
    /// platform has, the deadline is the last frame's (only a clock that cannot occur gets
    /// there).
    #[inline]
    pub fn poll_timeout(&self) -> Instant {
        let at = |d: Option<Duration>| {
            let d = d.map_or(NEVER, |d| d.min(NEVER));
            self.last_frame.checked_add(d).unwrap_or(self.last_frame)
        };
        let ping = if self.ping_sent {
            at(None)
        } else {
            at(self.config.keepalive)
        };
        at(self.config.idle).min(ping).min(at(self.config.hello))
    }

    /// The timer fired at `now`: ping, give up, or nothing (then re-arm at
    /// [`Liveness::poll_timeout`]).
    #[inline]
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Timeout> {
        let quiet = now.saturating_duration_since(self.last_frame);
        for limit in [self.config.hello, self.config.idle].into_iter().flatten() {
            if quiet >= limit {
                return Some(Timeout::Idle(limit));
            }
        }
        match self.config.keepalive {
            Some(keepalive) if !self.ping_sent && quiet >= keepalive => {
                self.nonce += 1;
                self.ping_sent = true;
                Some(Timeout::Ping(self.nonce))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn config() -> LivenessConfig {
        LivenessConfig {
            keepalive: Some(20 * S),
            idle: Some(60 * S),
            hello: None,
        }
    }

    #[test]
    fn a_quiet_peer_is_pinged_once_then_closed() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config(), t0);
        assert_eq!(l.poll_timeout(), t0 + 20 * S);
        assert_eq!(l.handle_timeout(t0 + 19 * S), None);
        assert_eq!(l.handle_timeout(t0 + 20 * S), Some(Timeout::Ping(1)));
        // One ping per quiet spell: the next deadline is the idle one.
        assert_eq!(l.poll_timeout(), t0 + 60 * S);
        assert_eq!(l.handle_timeout(t0 + 40 * S), None);
        assert_eq!(l.handle_timeout(t0 + 60 * S), Some(Timeout::Idle(60 * S)));
    }

    #[test]
    fn a_frame_resets_both_timers_and_allows_another_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config(), t0);
        assert_eq!(l.handle_timeout(t0 + 20 * S), Some(Timeout::Ping(1)));
        l.handle_frame(t0 + 30 * S);
        assert_eq!(l.poll_timeout(), t0 + 50 * S);
        // A timer armed before the frame fires early: nothing to do.
        assert_eq!(l.handle_timeout(t0 + 45 * S), None);
        assert_eq!(l.handle_timeout(t0 + 50 * S), Some(Timeout::Ping(2)));
        assert_eq!(l.handle_timeout(t0 + 90 * S), Some(Timeout::Idle(60 * S)));
    }

    #[test]
    fn the_hello_deadline_holds_until_the_hello_arrives() {
        let t0 = Instant::now();
        let hello = LivenessConfig {
            hello: Some(10 * S),
            ..config()
        };
        let mut l = Liveness::new(hello, t0);
        assert_eq!(l.poll_timeout(), t0 + 10 * S);
        assert_eq!(l.handle_timeout(t0 + 10 * S), Some(Timeout::Idle(10 * S)));
        let mut l = Liveness::new(hello, t0);
        l.handle_hello(t0 + 5 * S);
        assert_eq!(l.poll_timeout(), t0 + 25 * S);
        assert_eq!(l.handle_timeout(t0 + 15 * S), None);
    }

    #[test]
    fn without_timers_nothing_ever_fires() {
        let t0 = Instant::now();
        let mut l = Liveness::new(LivenessConfig::default(), t0);
        assert!(!l.is_enabled());
        assert!(l.poll_timeout() >= t0 + NEVER);
        assert_eq!(l.handle_timeout(t0 + NEVER), None);
        assert!(Liveness::new(config(), t0).is_enabled());
    }

    #[test]
    fn a_timeout_too_long_for_the_clock_is_armed_far_away() {
        let t0 = Instant::now();
        for config in [
            LivenessConfig {
                idle: Some(Duration::MAX),
                ..LivenessConfig::default()
            },
            LivenessConfig {
                keepalive: Some(Duration::from_secs(u64::MAX)),
                ..LivenessConfig::default()
            },
            LivenessConfig {
                hello: Some(Duration::MAX),
                ..LivenessConfig::default()
            },
        ] {
            let mut l = Liveness::new(config, t0);
            assert_eq!(l.poll_timeout(), t0 + NEVER, "{config:?}");
            // Armed that far, it fires and finds nothing to do: the limit is not reached.
            assert_eq!(l.handle_timeout(t0 + NEVER), None, "{config:?}");
        }
    }

    /// The latest `Instant` the platform has, found by halving steps.
    fn last_instant() -> Instant {
        let mut t = Instant::now();
        let mut step = Duration::from_secs(1 << 62);
        while step >= Duration::from_nanos(1) {
            match t.checked_add(step) {
                Some(later) => t = later,
                None => step /= 2,
            }
        }
        t
    }

    #[test]
    fn a_now_near_the_last_instant_does_not_overflow() {
        let far = last_instant();
        let mut l = Liveness::new(config(), Instant::now());
        l.handle_frame(far);
        assert_eq!(l.poll_timeout(), far);
        assert_eq!(l.handle_timeout(far), None);
        let mut l = Liveness::new(LivenessConfig::default(), far);
        assert_eq!(l.poll_timeout(), far);
        assert_eq!(l.handle_timeout(far), None);
    }

    #[test]
    fn a_now_that_goes_backwards_neither_closes_nor_pings() {
        let t0 = Instant::now() + 1000 * S;
        let mut l = Liveness::new(config(), t0);
        l.handle_frame(t0 + 500 * S);
        assert_eq!(l.handle_timeout(t0), None);
        assert_eq!(l.handle_timeout(t0 - 900 * S), None);
        assert!(l.poll_timeout() > t0);
    }
}
