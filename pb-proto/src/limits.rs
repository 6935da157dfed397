//! The limits of one native connection, what a violation of the protocol is, and the counts of
//! a connection's tables. Every limit has a safe default, and a sender holds what it sends to
//! its peer's limits (see [`crate::handshake::ReceiveLimits`]).

use crate::handshake::ReceiveLimits;
use crate::message::{MessageError, MessageLimits};

/// The deepest nesting of a decoded value, by default (pb-core's payload codec enforces it).
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// How long congested output may make no progress before the connection closes: the default
/// of pb-core's native `Config::write_stall_timeout` and of AMP's
/// [`AmpConfig::write_stall_timeout`](crate::amp::dispatch::AmpConfig::write_stall_timeout), 60 s.
pub const DEFAULT_WRITE_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Limits of one connection. Every limit has a safe default.
///
/// The limits on what the peer may send (`max_frame_len` and those in `message`) are announced
/// to the peer in the hello, and the peer holds what it sends to them: a call or an answer over
/// a peer's limit fails alone, with `CallError::LimitExceeded` (in pb-core), instead of costing the
/// connection. They are never below [`ReceiveLimits::FLOOR`] (lower settings are raised to it),
/// so that a dialer's first calls, sent before the peer's hello has arrived, never exceed them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame body accepted or sent (default 16 MiB, at least 64 KiB, at most 64 MiB).
    /// What we send is also held to the peer's own `max_frame_len`.
    pub max_frame_len: usize,
    /// Most of our calls awaiting answers at once (default 10 000).
    pub max_pending_calls: usize,
    /// Most incoming calls running at once (default 1 024).
    pub max_in_flight_calls: usize,
    /// Most objects exported to the peer at once, root excluded (default 10 000).
    pub max_exports: usize,
    /// Most distinct references imported from the peer at once (default 10 000).
    pub max_imports: usize,
    /// Limit violations tolerated before the connection is closed (default 3, as Twisted).
    pub max_violations: u32,
    /// Deepest nesting of a decoded argument or answer value (default
    /// [`DEFAULT_MAX_DEPTH`], 128); deeper values fail to decode.
    pub max_depth: usize,
    /// Most bytes queued for the peer and not yet written (default 4 MiB). Above it the
    /// connection applies backpressure: our own callers wait before queueing new calls, and
    /// the peer's calls, releases and pings are held back, still read but not run, until half
    /// of the queue has gone out; once `max_in_flight_calls` frames are held back, reading
    /// pauses (or once `max_held_bytes` of them are). A peer that sends without reading thus
    /// costs a bounded amount of memory, and is disconnected after
    /// `Config::write_stall_timeout` without progress.
    pub max_unsent_bytes: usize,
    /// Most bytes of the peer's frames held back (read but not run while our output is over
    /// `max_unsent_bytes`, or while `max_in_flight_calls` of its calls run) before reading
    /// pauses (default twice the default `max_frame_len`, 32 MiB). The pause applies while we
    /// wait for no answer from the peer: a peer we are calling may be holding our calls back
    /// for the same reason, and two peers that both stopped reading would never resume. Then
    /// the call window (`max_call_bytes`) bounds the calls held, and the frames other than
    /// calls held (releases, cancels, pings, and the like) are held to this limit (at least
    /// one frame of `max_frame_len`) by closing the connection once they pass it: a pb peer
    /// sends such frames a few bytes at a time, so only a flood gets there.
    pub max_held_bytes: usize,
    /// The call window: the most bytes (frame bodies) of the peer's calls held back or running
    /// here at once, from when a call is read until it is answered (or, wanting no answer,
    /// ends). Default four times the default `max_frame_len`: 64 MiB; raised to at least four
    /// times `max_frame_len` and to [`MIN_CALL_WINDOW`](crate::handshake::MIN_CALL_WINDOW).
    /// Announced in the hello ([`crate::handshake::Features::WINDOW`]): the peer keeps its
    /// calls in flight within it, parking the rest until answers come back, so a well-behaved
    /// peer never reaches it; a call beyond it is refused with `LimitExceeded` without being
    /// held, and counts as a violation.
    pub max_call_bytes: usize,
    /// Limits on message envelopes (at least 16 references per message and 16 release entries
    /// per message).
    pub message: MessageLimits,
}

/// The default of [`Limits::max_call_bytes`]: [`CALL_WINDOW_FRAMES`](crate::handshake::CALL_WINDOW_FRAMES)
/// frames of the default `max_frame_len`.
pub const DEFAULT_MAX_CALL_BYTES: usize =
    crate::handshake::CALL_WINDOW_FRAMES * crate::frame::DEFAULT_MAX_FRAME_LEN;

impl Limits {
    /// What these limits let the peer send, as our hello announces it: raised to
    /// [`ReceiveLimits::FLOOR`], and the frame size capped at
    /// [`crate::frame::MAX_FRAME_LEN_CEILING`], as the connection enforces them.
    pub fn receive(&self) -> ReceiveLimits {
        let limits = ReceiveLimits {
            max_frame_len: self.max_frame_len,
            max_refs_per_message: self.message.max_refs_per_message,
            max_release_entries: self.message.max_release_entries,
            max_call_bytes: Some(self.max_call_bytes),
        };
        let limits = ReceiveLimits {
            max_frame_len: limits
                .max_frame_len
                .min(crate::frame::MAX_FRAME_LEN_CEILING),
            ..limits
        };
        limits.at_least_floor()
    }

    /// These limits as a connection enforces them (see [`Limits::receive`]).
    pub fn enforced(&self) -> Limits {
        let receive = self.receive();
        Limits {
            max_frame_len: receive.max_frame_len,
            max_call_bytes: receive.max_call_bytes.unwrap_or(self.max_call_bytes),
            message: MessageLimits {
                max_refs_per_message: receive.max_refs_per_message,
                max_release_entries: receive.max_release_entries,
            },
            ..self.clone()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: crate::frame::DEFAULT_MAX_FRAME_LEN,
            max_pending_calls: 10_000,
            max_in_flight_calls: 1024,
            max_exports: 10_000,
            max_imports: 10_000,
            max_violations: 3,
            max_depth: DEFAULT_MAX_DEPTH,
            max_unsent_bytes: 4 << 20,
            max_held_bytes: 2 * crate::frame::DEFAULT_MAX_FRAME_LEN,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
            message: MessageLimits::default(),
        }
    }
}

/// The peer broke the protocol; the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame body did not decode as a message.
    #[error("malformed message: {0}")]
    Message(#[from] MessageError),
    /// A frame was malformed (a split frame that cannot be one).
    #[error("{0}")]
    Frame(#[from] crate::frame::FrameError),
    /// The peer reused the id of a call still in flight.
    #[error("request id {0} reused while in flight")]
    DuplicateRequest(u64),
    /// The peer exceeded limits too often.
    #[error("too many limit violations ({count}, max_violations = {max})")]
    TooManyViolations {
        /// How many there were.
        count: u32,
        /// The configured tolerance.
        max: u32,
    },
}

/// Counts of one connection's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Objects we export to the peer (root excluded).
    pub exported: usize,
    /// Distinct references we hold to the peer's objects (root excluded).
    pub imported: usize,
    /// Our calls awaiting answers.
    pub pending_calls: usize,
    /// The peer's calls running here.
    pub in_flight_calls: usize,
    /// Bytes of the peer's calls held back or running here (counted against
    /// [`Limits::max_call_bytes`]).
    pub call_bytes: usize,
    /// Our calls waiting for room in the peer's call window, not yet sent.
    pub parked_calls: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_without_limits_is_assumed_to_have_the_defaults() {
        assert_eq!(
            Limits::default().receive(),
            ReceiveLimits {
                max_call_bytes: Some(DEFAULT_MAX_CALL_BYTES),
                ..ReceiveLimits::ASSUMED
            }
        );
        let low = Limits {
            max_frame_len: 1,
            message: MessageLimits {
                max_refs_per_message: 0,
                max_release_entries: 0,
            },
            ..Limits::default()
        };
        assert_eq!(
            low.receive(),
            ReceiveLimits {
                max_call_bytes: Some(DEFAULT_MAX_CALL_BYTES),
                ..ReceiveLimits::FLOOR
            }
        );
        let narrow = Limits {
            max_call_bytes: 0,
            ..low.clone()
        };
        assert_eq!(
            narrow.enforced().max_call_bytes,
            crate::handshake::MIN_CALL_WINDOW
        );
        assert_eq!(
            low.enforced().max_frame_len,
            ReceiveLimits::FLOOR.max_frame_len
        );
        let high = Limits {
            max_frame_len: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(
            high.receive().max_frame_len,
            crate::frame::MAX_FRAME_LEN_CEILING
        );
    }
}
