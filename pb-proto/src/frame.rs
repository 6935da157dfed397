//! Frame codec: a 4-byte big-endian length and a body.
//!
//! The decoder never trusts a length: a header claiming more than the configured maximum is an
//! error before any allocation, and buffer space is only ever reserved for bytes that have
//! actually arrived (see [`FrameDecoder::reserve_hint`]), so a 4-byte header cannot turn into a
//! large reservation.
//!
//! **Split frames.** To a peer that announced [`Features::TAILS`](crate::handshake::Features),
//! a frame whose payload ends with a large byte string may be sent split, so that the receiver
//! can read that string into an allocation of its own (where a `Vec<u8>` can be made of it
//! without a copy) instead of into its read buffer. The length word then has its top bit
//! ([`SPLIT_FLAG`]) set, and a second word (u32 BE) follows it: the length of the **tail**,
//! the string's bytes, which end the body. The **head**, the body's bytes before the tail, ends
//! with [`TAIL_MARKER`] where the string's length prefix would be: a length of 0 written in the
//! three-byte form, which a canonical encoder never writes for 0. The frame means what the
//! same frame unsplit means (the head without the marker, the string's length prefix, the
//! tail); its length, for every limit, is the head's and the tail's. [`FrameDecoder::next`]
//! hands out the head as soon as it has arrived ([`Decoded::Split`]), and [`Tail`] reads the
//! tail.

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
    /// A split frame that is not one: from a peer we did not ask for split frames, or whose
    /// tail or head is not as a split frame's must be.
    #[error("malformed split frame: {0}")]
    BadSplit(&'static str),
    /// A split frame's tail could not be given an allocation of its length.
    #[error("no memory for a split frame's tail of {0} bytes")]
    NoMemory(usize),
}

/// The top bit of a frame's length word: the frame is split (see the [module docs](self)).
pub const SPLIT_FLAG: u32 = 1 << 31;

/// Length of a split frame's header: its length word and its tail's length.
pub const SPLIT_HEADER_LEN: usize = 8;

/// What ends a split frame's head, in place of its tail's length prefix: bincode's varint
/// marker for a two-byte length, then a length of 0.
pub const TAIL_MARKER: [u8; 3] = [251, 0, 0];

/// The least tail a sender splits off: below it, the string is read with the rest of its frame.
pub const MIN_TAIL: usize = 64 * 1024;

/// A received frame for the broker: its body, and, if it came split, its tail (the body then
/// ends with [`TAIL_MARKER`]; see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The body (a split frame's head).
    pub body: Bytes,
    /// A split frame's tail (boxed: most frames have none).
    pub tail: Option<Box<Bytes>>,
}

impl Frame {
    /// The frame's length, head and tail, as limits count it.
    #[inline]
    pub fn len(&self) -> usize {
        self.body.len() + self.tail.as_ref().map_or(0, |t| t.len())
    }

    /// Whether the frame has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for Frame {
    #[inline]
    fn from(body: Bytes) -> Frame {
        Frame { body, tail: None }
    }
}

/// How many bytes [`put_string_len`] writes for a byte string of `len` bytes.
pub fn string_len_size(len: usize) -> usize {
    match len as u64 {
        0..251 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Append to `out` the length prefix pb's payload codec (bincode's varint) writes before a
/// byte string of `len` bytes: what [`TAIL_MARKER`] stands for.
pub fn put_string_len(out: &mut Vec<u8>, len: usize) {
    let len = len as u64;
    if len < 251 {
        out.push(len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(len as u16).to_le_bytes());
    } else if len <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&len.to_le_bytes());
    }
}

/// `bytes`, which end with [`TAIL_MARKER`], and `tail` as one payload: the marker replaced by
/// the tail's length prefix, then the tail (a copy; what a split frame means).
pub fn join_tail(bytes: &[u8], tail: &[u8]) -> Bytes {
    let head = bytes.strip_suffix(&TAIL_MARKER[..]).unwrap_or(bytes);
    let mut whole = Vec::with_capacity(head.len() + string_len_size(tail.len()) + tail.len());
    whole.extend_from_slice(head);
    put_string_len(&mut whole, tail.len());
    whole.extend_from_slice(tail);
    Bytes::from(whole)
}

/// A frame taken from the read buffer by [`FrameDecoder::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame's body.
    Frame(Bytes),
    /// A split frame's head (ending with [`TAIL_MARKER`]); its tail, of `tail_len` bytes, is
    /// next in the stream (part of it may be in the read buffer already): read it with
    /// [`Tail`].
    Split {
        /// The head.
        head: Bytes,
        /// The tail's length.
        tail_len: usize,
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
    /// Whether split frames are accepted.
    tails: bool,
}

impl FrameDecoder {
    /// A decoder that accepts frame bodies of at most `max_len` bytes
    /// (clamped to [`MAX_FRAME_LEN_CEILING`]).
    #[inline]
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len: max_len.min(MAX_FRAME_LEN_CEILING),
            tails: false,
        }
    }

    /// Accept split frames from now on (we announced [`Features::TAILS`], and the peer too):
    /// [`FrameDecoder::next`] hands them out. Until then a split frame is an error.
    ///
    /// [`Features::TAILS`]: crate::handshake::Features::TAILS
    #[inline]
    pub fn accept_tails(&mut self, accept: bool) {
        self.tails = accept;
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

    /// Take one complete frame body out of `buf`, for a reader that accepts no split frames.
    ///
    /// Returns `Ok(None)` when more bytes are needed; consumes only the bytes of the decoded
    /// frame.
    #[inline]
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.next(buf)? {
            None => Ok(None),
            Some(Decoded::Frame(body)) => Ok(Some(body)),
            Some(Decoded::Split { .. }) => Err(FrameError::BadSplit("no split frames here")),
        }
    }

    /// Take one frame out of `buf`: a whole body, or a split frame's head once it has arrived
    /// (its tail follows; see [`Decoded::Split`]).
    ///
    /// Returns `Ok(None)` when more bytes are needed; consumes only the bytes of the decoded
    /// frame (or head).
    #[inline]
    pub fn next(&self, buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        // Without split frames, the flag is just too long a length.
        if word & SPLIT_FLAG != 0 && self.tails {
            return self.next_split(buf, (word & !SPLIT_FLAG) as usize);
        }
        let len = word as usize;
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
        Ok(Some(Decoded::Frame(frame)))
    }

    /// [`FrameDecoder::next`] for a split frame of `len` bytes in all.
    #[cold]
    fn next_split(&self, buf: &mut BytesMut, len: usize) -> Result<Option<Decoded>, FrameError> {
        if len > self.max_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_len,
            });
        }
        let Some(word) = buf.get(HEADER_LEN..SPLIT_HEADER_LEN) else {
            return Ok(None);
        };
        let tail_len = u32::from_be_bytes([word[0], word[1], word[2], word[3]]) as usize;
        if tail_len == 0 || tail_len + TAIL_MARKER.len() > len {
            return Err(FrameError::BadSplit(
                "a tail longer than its frame, or empty",
            ));
        }
        let head_len = len - tail_len;
        if buf.len() < SPLIT_HEADER_LEN + head_len {
            return Ok(None);
        }
        let mut head = buf.split_to(SPLIT_HEADER_LEN + head_len).freeze();
        head.advance(SPLIT_HEADER_LEN);
        if !head.ends_with(&TAIL_MARKER) {
            return Err(FrameError::BadSplit(
                "a head that does not end with the tail marker",
            ));
        }
        Ok(Some(Decoded::Split { head, tail_len }))
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
                let word = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                if word & SPLIT_FLAG != 0 && self.tails {
                    // The head only: the tail is read into an allocation of its own.
                    let Some(t) = buf.get(HEADER_LEN..SPLIT_HEADER_LEN) else {
                        return SPLIT_HEADER_LEN - buf.len();
                    };
                    let len = ((word & !SPLIT_FLAG) as usize).min(self.max_len);
                    let tail = u32::from_be_bytes([t[0], t[1], t[2], t[3]]) as usize;
                    return (SPLIT_HEADER_LEN + len.saturating_sub(tail)).saturating_sub(buf.len());
                }
                (HEADER_LEN + (word as usize).min(self.max_len)).saturating_sub(buf.len())
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

/// A split frame's tail being read, into an allocation of exactly its length (a `Vec<u8>` can
/// be made of the finished tail without a copy). The driver reads into [`Tail::buf`] until
/// [`Tail::is_complete`].
#[derive(Debug)]
pub struct Tail {
    buf: Vec<u8>,
    len: usize,
}

impl Tail {
    /// Start reading a tail of `len` bytes, taking the part of it `rbuf` holds already. A tail
    /// that is all there is a slice of `rbuf` (`Ok(Err(tail))`): nothing is gained by copying
    /// it. `len` comes from the peer: the allocation is fallible, and its pages are used only
    /// as bytes arrive.
    pub fn start(len: usize, rbuf: &mut BytesMut) -> Result<Result<Tail, Bytes>, FrameError> {
        if rbuf.len() >= len {
            return Ok(Err(rbuf.split_to(len).freeze()));
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|_| FrameError::NoMemory(len))?;
        buf.extend_from_slice(rbuf);
        rbuf.clear();
        Ok(Ok(Tail { buf, len }))
    }

    /// Where the next read goes: its spare room is what is missing (a read into it takes no
    /// more than that).
    #[inline]
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// How many bytes have not arrived yet.
    #[inline]
    pub fn missing(&self) -> usize {
        self.len - self.buf.len()
    }

    /// Whether every byte has arrived.
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.buf.len() >= self.len
    }

    /// The tail's bytes, once complete.
    #[inline]
    pub fn finish(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// Turn the frame header at `start` in `out` (a length word, then what is written of the body
/// so far) into a split frame's header, for a body that goes on with `more` bytes and then a
/// tail of `tail_len` bytes; returns the frame's length (head and tail).
#[cold]
pub fn split_header(out: &mut BytesMut, start: usize, more: usize, tail_len: usize) -> usize {
    let written = out.len() - start - HEADER_LEN;
    let len = written + more + tail_len;
    out.put_u32(0);
    out.copy_within(
        start + HEADER_LEN..start + HEADER_LEN + written,
        start + SPLIT_HEADER_LEN,
    );
    if let Some(header) = out.get_mut(start..start + SPLIT_HEADER_LEN) {
        header[..4].copy_from_slice(&(SPLIT_FLAG | len as u32).to_be_bytes());
        header[4..].copy_from_slice(&(tail_len as u32).to_be_bytes());
    }
    len
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

    /// A split frame: its header, `head` (which should end with the marker), and `tail`.
    fn split(head: &[u8], tail: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(SPLIT_FLAG | (head.len() + tail.len()) as u32);
        b.put_u32(tail.len() as u32);
        b.put_slice(head);
        b.put_slice(tail);
        b
    }

    #[test]
    fn a_split_frames_head_comes_out_once_it_has_arrived_and_its_tail_apart() {
        let mut d = FrameDecoder::new(1 << 20);
        let head = [&b"call"[..], &TAIL_MARKER].concat();
        let tail = vec![7u8; 1000];
        let mut wire = split(&head, &tail);
        encode_frame(b"next", &mut wire);
        // Refused until asked for: the flag is then part of too long a length.
        assert!(matches!(
            d.next(&mut wire.clone()),
            Err(FrameError::TooLong { .. })
        ));
        d.accept_tails(true);
        // Arriving a byte at a time: nothing until the head is whole, and room is asked for
        // the head only.
        let mut buf = BytesMut::new();
        let mut at = 0;
        let got = loop {
            assert!(d.missing(&buf) <= SPLIT_HEADER_LEN + head.len());
            if let Some(got) = d.next(&mut buf).unwrap() {
                break got;
            }
            buf.put_u8(wire[at]);
            at += 1;
        };
        assert_eq!(at, SPLIT_HEADER_LEN + head.len());
        assert_eq!(
            got,
            Decoded::Split {
                head: Bytes::from(head.clone()),
                tail_len: 1000
            }
        );
        // The tail: part in the read buffer, the rest read into its own allocation.
        buf.extend_from_slice(&wire[at..at + 10]);
        at += 10;
        let mut t = Tail::start(1000, &mut buf).unwrap().unwrap();
        assert!(buf.is_empty() && !t.is_complete());
        assert_eq!(t.buf().capacity(), 1000);
        t.buf().extend_from_slice(&wire[at..at + 990]);
        at += 990;
        assert!(t.is_complete());
        let got = t.finish();
        assert_eq!(got, tail);
        // A tail all in the read buffer is a slice of it.
        let mut rest = BytesMut::from(&wire[at - 1000..]);
        let whole = Tail::start(1000, &mut rest).unwrap().unwrap_err();
        assert_eq!(whole, tail);
        assert_eq!(d.decode(&mut rest), Ok(Some(Bytes::from_static(b"next"))));
        // A whole-frame reader refuses a split frame.
        assert_eq!(
            d.decode(&mut wire),
            Err(FrameError::BadSplit("no split frames here"))
        );
    }

    #[test]
    fn malformed_split_frames_are_errors() {
        let mut d = FrameDecoder::new(4096);
        d.accept_tails(true);
        let marked = [&b"x"[..], &TAIL_MARKER].concat();
        for (mut wire, why) in [
            (
                split(b"xyz", &[1; 10]),
                "a head that does not end with the tail marker",
            ),
            (
                split(&marked, &[]),
                "a tail longer than its frame, or empty",
            ),
            (
                split(b"ab", &[1; 10]),
                "a tail longer than its frame, or empty",
            ),
        ] {
            assert_eq!(d.next(&mut wire), Err(FrameError::BadSplit(why)));
        }
        let mut long = split(&marked, &[1; 5000]);
        assert_eq!(
            d.next(&mut long),
            Err(FrameError::TooLong {
                len: 5004,
                max: 4096
            })
        );
        // A tail claimed beyond any allocation is an error, not an abort.
        let mut buf = BytesMut::new();
        assert_eq!(
            Tail::start(usize::MAX, &mut buf).unwrap_err(),
            FrameError::NoMemory(usize::MAX)
        );
    }

    #[test]
    fn a_string_length_prefix_is_as_long_as_said() {
        for len in [
            0,
            250,
            251,
            65_535,
            65_536,
            u32::MAX as usize,
            u32::MAX as usize + 1,
        ] {
            let mut out = Vec::new();
            put_string_len(&mut out, len);
            assert_eq!(out.len(), string_len_size(len), "{len}");
        }
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
