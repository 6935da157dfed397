//! Frame codec: a 4-byte big-endian length and a body.
//!
//! The decoder never trusts a length: a header claiming more than the configured maximum is an
//! error before any allocation, and buffer space is only ever reserved for bytes that have
//! actually arrived (see [`FrameDecoder::reserve_hint`]), so a 4-byte header cannot turn into a
//! large reservation.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the length prefix in bytes.
pub const HEADER_LEN: usize = 4;

/// The default maximum frame body size after the handshake: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The hard ceiling for any configured frame size: 64 MiB. Larger data is streamed.
pub const MAX_FRAME_LEN_CEILING: usize = 64 * 1024 * 1024;

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame longer than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit max_frame_len = {max}")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// The least spare room the read buffer gets before a read: enough for a burst of small
/// frames, and what an idle connection keeps allocated.
pub(crate) const MIN_READ: usize = 2048;

/// Incremental decoder of length-prefixed frames.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder that accepts frame bodies of at most `max_len` bytes
    /// (clamped to [`MAX_FRAME_LEN_CEILING`]).
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len: max_len.min(MAX_FRAME_LEN_CEILING),
        }
    }

    /// The maximum frame body length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Change the maximum frame body length (for example after login).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len.min(MAX_FRAME_LEN_CEILING);
    }

    /// Take one complete frame body out of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; consumes only the bytes of the decoded
    /// frame.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_len,
            });
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        Ok(Some(buf.split_to(len).freeze()))
    }

    /// How many more bytes of spare capacity the read buffer should have before the next read.
    ///
    /// While a large frame is arriving this grows with the bytes received, a chunk at a time,
    /// never by the claimed length at once.
    pub fn reserve_hint(&self, buf: &BytesMut) -> usize {
        const CHUNK: usize = 64 * 1024;
        let wanted = match buf.get(..HEADER_LEN) {
            Some(h) => {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                (HEADER_LEN + len.min(self.max_len)).saturating_sub(buf.len())
            }
            None => 0,
        };
        wanted.clamp(MIN_READ, CHUNK)
    }
}

/// Append one frame (header and body) to `out`.
///
/// # Panics
/// Never for bodies up to `u32::MAX` bytes; callers check their own limits first.
pub fn encode_frame(body: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_LEN + body.len());
    out.put_u32(body.len() as u32);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_is_need_more() {
        let d = FrameDecoder::new(100);
        let mut b = BytesMut::from(&[0u8, 0, 0][..]);
        assert_eq!(d.decode(&mut b), Ok(None));
        b.extend_from_slice(&[5, 1, 2]);
        assert_eq!(d.decode(&mut b), Ok(None));
        assert_eq!(b.len(), 6, "nothing consumed while incomplete");
        b.extend_from_slice(&[3, 4, 5, 9]);
        assert_eq!(
            d.decode(&mut b),
            Ok(Some(Bytes::from_static(&[1, 2, 3, 4, 5])))
        );
        assert_eq!(&b[..], &[9], "only the frame's bytes are consumed");
    }

    #[test]
    fn oversized_header_is_rejected_before_body() {
        let d = FrameDecoder::new(1024);
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            d.decode(&mut b),
            Err(FrameError::TooLong {
                len: u32::MAX as usize,
                max: 1024
            })
        );
        assert!(d.reserve_hint(&b) <= 64 * 1024);
    }

    #[test]
    fn round_trip() {
        let mut out = BytesMut::new();
        encode_frame(b"hello", &mut out);
        encode_frame(b"", &mut out);
        let d = FrameDecoder::new(16);
        assert_eq!(d.decode(&mut out).unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(d.decode(&mut out).unwrap().unwrap(), &b""[..]);
        assert_eq!(d.decode(&mut out).unwrap(), None);
    }
}
