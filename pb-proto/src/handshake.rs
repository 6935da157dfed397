//! The handshake: the first frame each side sends.
//!
//! The dialing side sends its [`Hello`] at once, without waiting for the peer's; the accepting
//! side answers with its own as soon as the dialer's has arrived (with its first answer, in the
//! same write), whether it accepts the dialer's or not. Each checks the one it receives. A
//! version mismatch is therefore detected by both sides independently: a clear error on both
//! sides, never a hang. A dialer may send its first calls right behind its hello
//! (`Connection::dial`).
//!
//! Layout of the 16-byte body: magic `b"PBRS"`, version (u16 BE), reserved (u16, zero), feature
//! flags (u64 BE). Features are negotiated as the intersection of both sides' flags.
//!
//! With [`Features::LIMITS`] set, the sender's receive limits follow (28 bytes in all):
//! `max_frame_len`, `max_refs_per_message` and `max_release_entries` (u32 BE each), so that the
//! peer never sends what the sender would refuse ([`ReceiveLimits`]). With [`Features::WINDOW`]
//! set as well, `max_call_bytes` follows them (u32 BE, 32 bytes in all): the sender's call
//! window. Bytes after what the flags
//! announce are ignored, up to [`HELLO_MAX_LEN`]: room for later extensions, each announced by
//! a flag of its own. A hello without the flag (16 bytes, as builds from before it send) is
//! still accepted, and its sender is taken to accept [`ReceiveLimits::ASSUMED`]; those builds
//! refuse a hello longer than 16 bytes, so the accepting side sends its limits only to a dialer
//! whose hello carried them.

use bytes::BufMut;

/// The magic that opens every pb connection.
pub const MAGIC: [u8; 4] = *b"PBRS";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// Length of an encoded [`Hello`] body without limits (the least a hello may be).
pub const HELLO_LEN: usize = 16;

/// Length of an encoded [`Hello`] body that carries the sender's [`ReceiveLimits`] without a
/// call window.
pub const HELLO_LIMITS_LEN: usize = HELLO_LEN + 12;

/// Length of an encoded [`Hello`] body that carries the sender's [`ReceiveLimits`] with its
/// call window ([`Features::WINDOW`]).
pub const HELLO_WINDOW_LEN: usize = HELLO_LIMITS_LEN + 4;

/// The longest hello body accepted (the bytes past what the flags announce are ignored).
pub const HELLO_MAX_LEN: usize = 64;

/// Feature flags a peer may advertise in its [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u64);

impl Features {
    /// No optional features.
    pub const NONE: Features = Features(0);

    /// The hello carries the sender's [`ReceiveLimits`] after the flags. Every hello this build
    /// sends sets it (but see [`Hello::with_limits`]).
    pub const LIMITS: Features = Features(1);

    /// The sender counts the bytes of the calls it receives against a window, announced after
    /// its limits ([`ReceiveLimits::max_call_bytes`]): its peer keeps the calls it has in
    /// flight within it, and it tells its peer when calls that get no answer (one-way calls,
    /// refused ones) have ended (a credit message), and answers a cancelled call with a
    /// fault. Set exactly when the limits carry a window.
    pub const WINDOW: Features = Features(2);

    /// The sender reads split frames ([`frame`](crate::frame)'s module docs): its peer may
    /// send the last byte string of a frame's payload apart, for it to read into an allocation
    /// of its own. Negotiated: either side sends split frames only when both set it.
    pub const TAILS: Features = Features(4);

    /// The features both sides support.
    pub fn intersect(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }

    /// Whether every flag of `flag` is set.
    pub fn contains(self, flag: Features) -> bool {
        self.0 & flag.0 == flag.0
    }
}

/// What one side accepts from its peer: the limits its decoder enforces on every message, which
/// the peer must therefore respect when it sends. Carried in the hello ([`Features::LIMITS`])
/// and, when they change on an open connection, in a limits message
/// (`crate::message::Message::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiveLimits {
    /// The largest frame body accepted.
    pub max_frame_len: usize,
    /// The most object references one message may carry.
    pub max_refs_per_message: usize,
    /// The most entries one release message may carry.
    pub max_release_entries: usize,
    /// The call window: the most bytes (frame bodies) of the sender's calls that may be held
    /// or running at the receiver at once, counted from when the receiver reads a call until
    /// it has answered it (or, for a call that wants no answer, until it has ended and said
    /// so with a credit). `None`: the peer counts nothing (a build from before
    /// [`Features::WINDOW`]), and sends no credits.
    pub max_call_bytes: Option<usize>,
}

/// How many of the largest frames a call window holds at least (the default window holds as
/// many of the default frames: `limits::DEFAULT_MAX_CALL_BYTES`), so that the largest call
/// never waits for room that cannot come.
pub const CALL_WINDOW_FRAMES: usize = 4;

/// The least frame size any pb peer accepts ([`ReceiveLimits::FLOOR`]).
const FLOOR_FRAME_LEN: usize = 64 * 1024;

/// The least call window any pb peer that has one announces: [`CALL_WINDOW_FRAMES`] frames
/// of the floor's size.
pub const MIN_CALL_WINDOW: usize = CALL_WINDOW_FRAMES * FLOOR_FRAME_LEN;

impl ReceiveLimits {
    /// What every pb peer accepts at any time: receive limits configured lower are raised to
    /// it. A dialer sends its first calls before the peer's hello has told it the peer's
    /// limits, and holds them to this floor until it has.
    pub const FLOOR: ReceiveLimits = ReceiveLimits {
        max_frame_len: FLOOR_FRAME_LEN,
        max_refs_per_message: 16,
        max_release_entries: 16,
        max_call_bytes: Some(MIN_CALL_WINDOW),
    };

    /// What a peer whose hello carries no limits (a build from before [`Features::LIMITS`]) is
    /// taken to accept: the default limits, which are what such a peer enforces unless it was
    /// configured otherwise, and no call window (such builds count none).
    pub const ASSUMED: ReceiveLimits = ReceiveLimits {
        max_frame_len: crate::frame::DEFAULT_MAX_FRAME_LEN,
        max_refs_per_message: 1024,
        max_release_entries: 4096,
        max_call_bytes: None,
    };

    /// These limits, raised to [`ReceiveLimits::FLOOR`] where they are below it; a call window
    /// is also raised to [`CALL_WINDOW_FRAMES`] frames of `max_frame_len`.
    pub fn at_least_floor(self) -> ReceiveLimits {
        let floor = ReceiveLimits::FLOOR;
        let max_frame_len = self.max_frame_len.max(floor.max_frame_len);
        ReceiveLimits {
            max_frame_len,
            max_refs_per_message: self.max_refs_per_message.max(floor.max_refs_per_message),
            max_release_entries: self.max_release_entries.max(floor.max_release_entries),
            max_call_bytes: self.max_call_bytes.map(|w| {
                w.max(MIN_CALL_WINDOW)
                    .max(max_frame_len.saturating_mul(CALL_WINDOW_FRAMES))
            }),
        }
    }
}

/// The first frame on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's optional features. [`Features::LIMITS`] is set on the wire exactly when
    /// `limits` is there.
    pub features: Features,
    /// What the sender accepts, if its hello says.
    pub limits: Option<ReceiveLimits>,
}

impl Hello {
    /// The hello this build sends, without limits (as builds from before
    /// [`Features::LIMITS`] send it; see [`Hello::with_limits`]).
    pub fn ours(features: Features) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            features: Features(features.0 & !(Features::LIMITS.0 | Features::WINDOW.0)),
            limits: None,
        }
    }

    /// This hello, announcing that its sender accepts `limits` (and, if they carry one, its
    /// call window: [`Features::WINDOW`]).
    pub fn with_limits(self, limits: ReceiveLimits) -> Hello {
        let window = if limits.max_call_bytes.is_some() {
            Features::WINDOW.0
        } else {
            0
        };
        Hello {
            features: Features(
                (self.features.0 & !Features::WINDOW.0) | Features::LIMITS.0 | window,
            ),
            limits: Some(limits),
            ..self
        }
    }

    /// The length of the encoded body.
    pub fn encoded_len(&self) -> usize {
        match self.limits {
            Some(ReceiveLimits {
                max_call_bytes: Some(_),
                ..
            }) => HELLO_WINDOW_LEN,
            Some(_) => HELLO_LIMITS_LEN,
            None => HELLO_LEN,
        }
    }

    /// The flags as the wire carries them: [`Features::LIMITS`] and [`Features::WINDOW`] set
    /// exactly when what they announce follows.
    fn wire_flags(&self) -> u64 {
        let announced = Features::LIMITS.0 | Features::WINDOW.0;
        let carried = match self.limits {
            Some(l) if l.max_call_bytes.is_some() => announced,
            Some(_) => Features::LIMITS.0,
            None => 0,
        };
        (self.features.0 & !announced) | carried
    }

    /// Encode the hello body (without frame header).
    pub fn encode(&self, out: &mut impl BufMut) {
        let flags = self.wire_flags();
        out.put_slice(&MAGIC);
        out.put_u16(self.version);
        out.put_u16(0);
        out.put_u64(flags);
        if let Some(l) = &self.limits {
            // Saturated: a limit past what 32 bits hold is as good as none.
            let wide = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            out.put_u32(wide(l.max_frame_len));
            out.put_u32(wide(l.max_refs_per_message));
            out.put_u32(wide(l.max_release_entries));
            if let Some(window) = l.max_call_bytes {
                out.put_u32(wide(window));
            }
        }
    }

    /// Decode a hello body.
    pub fn decode(body: &[u8]) -> Result<Hello, HandshakeError> {
        let Some(&[m0, m1, m2, m3, v0, v1, _, _, f0, f1, f2, f3, f4, f5, f6, f7]) = body
            .get(..HELLO_LEN)
            .and_then(|s| <&[u8; HELLO_LEN]>::try_from(s).ok())
        else {
            return Err(HandshakeError::Malformed { len: body.len() });
        };
        if [m0, m1, m2, m3] != MAGIC {
            return Err(HandshakeError::BadMagic {
                magic: [m0, m1, m2, m3],
            });
        }
        let features = Features(u64::from_be_bytes([f0, f1, f2, f3, f4, f5, f6, f7]));
        let limits = if features.contains(Features::LIMITS) {
            let Some(&[a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3]) = body
                .get(HELLO_LEN..HELLO_LIMITS_LEN)
                .and_then(|s| <&[u8; HELLO_LIMITS_LEN - HELLO_LEN]>::try_from(s).ok())
            else {
                return Err(HandshakeError::Malformed { len: body.len() });
            };
            let narrow = |b: [u8; 4]| u32::from_be_bytes(b) as usize;
            let max_call_bytes = if features.contains(Features::WINDOW) {
                let Some(&[w0, w1, w2, w3]) = body
                    .get(HELLO_LIMITS_LEN..HELLO_WINDOW_LEN)
                    .and_then(|s| <&[u8; HELLO_WINDOW_LEN - HELLO_LIMITS_LEN]>::try_from(s).ok())
                else {
                    return Err(HandshakeError::Malformed { len: body.len() });
                };
                Some(narrow([w0, w1, w2, w3]))
            } else {
                None
            };
            Some(ReceiveLimits {
                max_frame_len: narrow([a0, a1, a2, a3]),
                max_refs_per_message: narrow([b0, b1, b2, b3]),
                max_release_entries: narrow([c0, c1, c2, c3]),
                max_call_bytes,
            })
        } else if features.contains(Features::WINDOW) {
            // A window is announced after limits that are not there.
            return Err(HandshakeError::Malformed { len: body.len() });
        } else {
            None
        };
        if body.len() > HELLO_MAX_LEN {
            return Err(HandshakeError::Malformed { len: body.len() });
        }
        Ok(Hello {
            version: u16::from_be_bytes([v0, v1]),
            features,
            limits,
        })
    }

    /// Check the peer's hello against ours; returns the negotiated features.
    pub fn negotiate(&self, peer: &Hello) -> Result<Features, HandshakeError> {
        if peer.version != self.version {
            return Err(HandshakeError::VersionMismatch {
                ours: self.version,
                theirs: peer.version,
            });
        }
        Ok(self.features.intersect(peer.features))
    }
}

/// The handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer is not speaking pb.
    #[error("peer is not speaking pb (magic {magic:02x?})")]
    BadMagic {
        /// The four bytes received instead of the magic.
        magic: [u8; 4],
    },
    /// The peer's hello has the wrong size.
    #[error("malformed hello of {len} bytes")]
    Malformed {
        /// The body length received.
        len: usize,
    },
    /// The peer closed the connection before its hello arrived: it does not speak pb (or
    /// refused the connection, a server at its connection limit, say).
    #[error(
        "the peer closed the connection before its pb hello: it is not a pb server, or it refused the connection"
    )]
    ClosedBeforeHello,
    /// The connection failed before the peer's hello arrived, for a reason other than the
    /// peer closing it: a TLS server refusing our certificate, say (the text says which).
    #[error("the connection failed before its pb hello: {0}")]
    FailedBeforeHello(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn round_trip_and_mismatch() {
        let mut b = BytesMut::new();
        Hello::ours(Features(6)).encode(&mut b);
        let h = Hello::decode(&b).unwrap();
        assert_eq!(h, Hello::ours(Features(6)));
        let old = Hello {
            version: 0,
            features: Features::NONE,
            limits: None,
        };
        assert_eq!(
            Hello::ours(Features::NONE).negotiate(&old),
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 0
            })
        );
        assert!(matches!(
            Hello::decode(b"HTTP/1.1 200 OK\r\n"),
            Err(HandshakeError::BadMagic { .. })
        ));
        assert!(matches!(
            Hello::decode(b"PB"),
            Err(HandshakeError::Malformed { len: 2 })
        ));
    }

    #[test]
    fn limits_ride_after_the_flags_and_are_optional() {
        let limits = ReceiveLimits {
            max_frame_len: 100_000,
            max_refs_per_message: 20,
            max_release_entries: 30,
            max_call_bytes: None,
        };
        let hello = Hello::ours(Features(4)).with_limits(limits);
        assert_eq!(hello.features, Features(5));
        let mut b = BytesMut::new();
        hello.encode(&mut b);
        assert_eq!(b.len(), HELLO_LIMITS_LEN);
        assert_eq!(hello.encoded_len(), HELLO_LIMITS_LEN);
        assert_eq!(&b[8..16], &5u64.to_be_bytes());
        assert_eq!(&b[16..], &[0, 1, 0x86, 0xa0, 0, 0, 0, 20, 0, 0, 0, 30]);
        assert_eq!(Hello::decode(&b), Ok(hello));
        // Bytes a later extension adds are ignored, up to the longest hello.
        b.extend_from_slice(&[0xee; HELLO_MAX_LEN - HELLO_LIMITS_LEN]);
        assert_eq!(Hello::decode(&b), Ok(hello));
        b.extend_from_slice(&[0xee]);
        assert!(matches!(
            Hello::decode(&b),
            Err(HandshakeError::Malformed { .. })
        ));
        // The flag without the limits it announces.
        let mut short = BytesMut::new();
        Hello::ours(Features::NONE).encode(&mut short);
        short[15] = 1;
        assert_eq!(
            Hello::decode(&short),
            Err(HandshakeError::Malformed { len: HELLO_LEN })
        );
        // The call window follows the limits, announced by a flag of its own.
        let windowed = Hello::ours(Features(4)).with_limits(ReceiveLimits {
            max_call_bytes: Some(0x0100_0000),
            ..limits
        });
        assert_eq!(windowed.features, Features(7));
        let mut w = BytesMut::new();
        windowed.encode(&mut w);
        assert_eq!(
            (w.len(), windowed.encoded_len()),
            (HELLO_WINDOW_LEN, HELLO_WINDOW_LEN)
        );
        assert_eq!(&w[28..], &[1, 0, 0, 0]);
        assert_eq!(Hello::decode(&w), Ok(windowed));
        // Announced, not there.
        assert_eq!(
            Hello::decode(&w[..HELLO_LIMITS_LEN]),
            Err(HandshakeError::Malformed {
                len: HELLO_LIMITS_LEN
            })
        );
        // A window is raised to the floor's, and to four of the largest frames.
        let low = ReceiveLimits {
            max_call_bytes: Some(1),
            ..limits
        };
        assert_eq!(low.at_least_floor().max_call_bytes, Some(4 * 100_000));
        let tiny = ReceiveLimits {
            max_frame_len: 1,
            ..low
        };
        assert_eq!(tiny.at_least_floor().max_call_bytes, Some(MIN_CALL_WINDOW));
        assert_eq!(limits.at_least_floor().max_call_bytes, None);
        // The window's flag without limits.
        short[15] = 2;
        assert_eq!(
            Hello::decode(&short),
            Err(HandshakeError::Malformed { len: HELLO_LEN })
        );
        // Without limits, the flag is never sent.
        let plain = Hello::ours(Features(1));
        assert_eq!(plain.features, Features::NONE);
        let mut p = BytesMut::new();
        plain.encode(&mut p);
        assert_eq!(p.len(), HELLO_LEN);
        assert_eq!(Hello::decode(&p), Ok(plain));
    }

    #[test]
    fn limits_saturate_and_are_raised_to_the_floor() {
        let huge = ReceiveLimits {
            max_frame_len: usize::MAX,
            max_refs_per_message: 1,
            max_release_entries: 0,
            max_call_bytes: Some(usize::MAX),
        };
        let mut b = BytesMut::new();
        Hello::ours(Features::NONE).with_limits(huge).encode(&mut b);
        let got = Hello::decode(&b).unwrap().limits.unwrap();
        assert_eq!(got.max_frame_len, u32::MAX as usize);
        let raised = huge.at_least_floor();
        assert_eq!(
            raised.max_refs_per_message,
            ReceiveLimits::FLOOR.max_refs_per_message
        );
        assert_eq!(
            raised.max_release_entries,
            ReceiveLimits::FLOOR.max_release_entries
        );
        assert_eq!(raised.max_frame_len, usize::MAX);
    }
}
