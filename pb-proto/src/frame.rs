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

/// The least spare room the read buffer gets when it is given more: enough for a burst of small
/// frames, and what an idle connection keeps allocated.
pub const MIN_READ: usize = 2048;

/// Spare room that is enough for a read of small frames, without making more.
const ENOUGH_READ: usize = MIN_READ * 3 / 4;

/// The most room made for a read at once: a large frame's buffer grows by this much at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The least spare room a read goes into while the buffer's allocation is still shared with
/// received frames (see [`FrameDecoder::prepare_read`]).
const LOW_WATER: usize = 512;

/// Incremental decoder of length-prefixed frames.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
}

impl FrameDecoder {
    /// A decoder that accepts frame bodies of at most `max_len` bytes
    /// (clamped to [`MAX_FRAME_LEN_CEILING`]).
    #[inline]
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len: max_len.min(MAX_FRAME_LEN_CEILING),
        }
    }

    /// The maximum frame body length.
    #[inline]
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Change the maximum frame body length (for example after login).
    #[inline]
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len.min(MAX_FRAME_LEN_CEILING);
    }

    /// Take one complete frame body out of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; consumes only the bytes of the decoded
    /// frame.
    #[inline]
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
        // One split of the buffer (its header dropped from the frame, which is cheaper than
        // advancing the buffer past it first).
        let mut frame = buf.split_to(HEADER_LEN + len).freeze();
        frame.advance(HEADER_LEN);
        Ok(Some(frame))
    }

    /// How many more bytes of spare capacity the read buffer should have before the next read.
    ///
    /// While a large frame is arriving this grows with the bytes received, a chunk at a time,
    /// never by the claimed length at once.
    #[inline]
    pub fn reserve_hint(&self, buf: &BytesMut) -> usize {
        self.missing(buf).clamp(MIN_READ, READ_CHUNK)
    }

    /// How many bytes of the partial frame at the front of `buf` have not arrived yet (as far
    /// as the length limit allows it to claim).
    #[inline]
    fn missing(&self, buf: &BytesMut) -> usize {
        match buf.get(..HEADER_LEN) {
            Some(h) => {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                (HEADER_LEN + len.min(self.max_len)).saturating_sub(buf.len())
            }
            None => 0,
        }
    }

    /// Make room in `buf` for the next read, as [`FrameDecoder::reserve_hint`] asks, without
    /// allocating while that can be avoided. Returns `false` when the read is to go into less
    /// room than that: calling it again before a later attempt may find more.
    ///
    /// Received frames are slices of `buf`'s allocation. Once none of them is held any more,
    /// the allocation is reused from its start. While some are (answers not yet taken by their
    /// callers), making room would mean a new allocation, so the read goes into the room that
    /// is left, as long as that is not too little and no partial frame needs more.
    #[inline]
    pub fn prepare_read(&self, buf: &mut BytesMut) -> bool {
        let spare = buf.capacity() - buf.len();
        let missing = self.missing(buf);
        if spare >= ENOUGH_READ && spare >= missing.min(READ_CHUNK) {
            return true;
        }
        let wanted = missing.clamp(MIN_READ, READ_CHUNK);
        if buf.try_reclaim(wanted) {
            return true;
        }
        if spare >= LOW_WATER && spare >= missing {
            return false;
        }
        buf.reserve(wanted);
        true
    }
}

/// Append one frame (header and body) to `out`.
///
/// # Panics
/// Never for bodies up to `u32::MAX` bytes; callers check their own limits first.
#[inline]
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
    fn small_frames_are_read_into_one_allocation() {
        let d = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        assert!(d.prepare_read(&mut buf));
        let room = buf.capacity();
        assert!(room >= MIN_READ);
        // Frames still held do not make the next read allocate while room is left: it goes
        // into what is left, and says so once that is less than a full read's room.
        let mut held = Vec::new();
        let base = buf.as_ptr() as usize;
        while buf.capacity() >= LOW_WATER + 14 {
            let full = d.prepare_read(&mut buf);
            assert_eq!(full, buf.capacity() >= ENOUGH_READ);
            assert_eq!(buf.as_ptr() as usize - base + buf.capacity(), room);
            encode_frame(b"0123456789", &mut buf);
            held.push(d.decode(&mut buf).unwrap().unwrap());
        }
        // Once they are dropped, the allocation is reused from its start.
        held.clear();
        assert!(d.prepare_read(&mut buf));
        assert_eq!(buf.as_ptr() as usize, base);
        assert_eq!(buf.capacity(), room);
        // Low on room while frames are held: a new allocation.
        while buf.capacity() >= LOW_WATER {
            encode_frame(b"0123456789", &mut buf);
            held.push(d.decode(&mut buf).unwrap().unwrap());
        }
        assert!(d.prepare_read(&mut buf));
        assert!(buf.capacity() - buf.len() >= MIN_READ);
        assert!(!(base..base + room).contains(&(buf.as_ptr() as usize)));
    }

    #[test]
    fn a_partial_frame_gets_the_room_it_needs() {
        let d = FrameDecoder::new(1 << 20);
        // A claim of more than the room there is: room is made, and the read may go ahead.
        let mut buf = BytesMut::with_capacity(1024);
        buf.put_u32(2000);
        assert!(d.prepare_read(&mut buf));
        assert!(buf.capacity() - buf.len() >= 2000);
        let mut big = BytesMut::with_capacity(4096);
        big.put_u32(1 << 20);
        d.prepare_read(&mut big);
        let spare = big.capacity() - big.len();
        assert!((64 * 1024..2 * 64 * 1024).contains(&spare), "{spare}");
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
