//! The bytes queued for the peer: frames appended to one buffer, large payloads kept as chunks
//! of their own, handed to the driver in order for one vectored write.
//!
//! Small frames are appended to one allocation (reclaimed once what was written from it is
//! dropped) instead of many tiny ones; a payload of [`ZERO_COPY_MIN`] bytes or more is not
//! copied: the buffer so far is split off as a chunk, and the payload follows as a chunk of its
//! own. Order is kept: chunks, then the buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// The least room made in the buffer when it runs out.
pub const OUT_CHUNK: usize = 256;

/// Payloads at least this large are queued as their own chunk instead of being copied.
pub const ZERO_COPY_MIN: usize = 4096;

/// Frames waiting to be written. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Outbox {
    out: BytesMut,
    chunks: Vec<Bytes>,
    /// Total length of `chunks`.
    chunks_len: usize,
}

impl Outbox {
    /// An empty outbox (it allocates on first use).
    #[inline]
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.chunks.is_empty()
    }

    /// Bytes queued and not yet taken.
    #[inline]
    pub fn len(&self) -> usize {
        self.out.len() + self.chunks_len
    }

    /// The buffer frames are appended to, for encoders that write a frame's head in place.
    /// Whatever is appended must be whole frames once the caller is done.
    #[inline]
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Make room for `n` more bytes in the buffer.
    #[inline]
    pub fn reserve(&mut self, n: usize) {
        if self.out.capacity() - self.out.len() < n {
            self.out.reserve(n.max(OUT_CHUNK));
        }
    }

    /// Room for a frame header, an envelope of about `head` bytes and a payload of
    /// `payload_len` bytes if it will be copied in.
    #[inline]
    pub fn reserve_frame(&mut self, head: usize, payload_len: usize) {
        let copied = if payload_len >= ZERO_COPY_MIN {
            0
        } else {
            payload_len
        };
        self.reserve(4 + head + copied);
    }

    /// Queue bytes that are not a frame (a hello) before anything else is queued.
    #[inline]
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        // With the usual room (not just the hello's), so that the first frame, which usually
        // follows at once, needs no second allocation.
        self.reserve(bytes.len());
        self.out.extend_from_slice(bytes);
    }

    /// Queue one frame whose body `body` writes.
    #[inline]
    pub fn write_frame(&mut self, body: impl FnOnce(&mut BytesMut)) {
        self.reserve(64);
        let start = self.begin_frame();
        body(&mut self.out);
        self.finish_frame(start, 0);
    }

    /// Start a frame: a placeholder length. Returns where the frame starts, for
    /// [`Outbox::finish_frame`] or [`Outbox::push_payload`].
    #[inline]
    pub fn begin_frame(&mut self) -> usize {
        let start = self.out.len();
        self.out.put_u32(0);
        start
    }

    /// Set the length of the frame started at `start`: what follows it in the buffer plus
    /// `extra` bytes still to come.
    #[inline]
    pub fn finish_frame(&mut self, start: usize, extra: usize) {
        let len = (self.out.len() - start - 4 + extra) as u32;
        if let Some(h) = self.out.get_mut(start..start + 4) {
            h.copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Finish the frame started at `start` with `payload` as its tail.
    #[inline]
    pub fn push_payload(&mut self, start: usize, payload: Bytes) {
        self.finish_frame(start, payload.len());
        self.append_payload(payload);
    }

    /// Append the payload of a frame whose head (with its length) is in the buffer: copied if
    /// small, a chunk of its own if large.
    #[inline]
    pub fn append_payload(&mut self, payload: Bytes) {
        if payload.len() >= ZERO_COPY_MIN {
            let head = self.out.split().freeze();
            self.chunks_len += head.len() + payload.len();
            self.chunks.push(head);
            self.chunks.push(payload);
        } else {
            self.out.put_slice(&payload);
        }
    }

    /// Hand over everything queued: whole chunks are appended to `into`, and the buffer, which
    /// follows them, is exchanged for `tail` (what `tail` held goes to `into` first, keeping the
    /// order), so the buffer's written allocation comes back for reuse without splitting a chunk
    /// off it. Returns how many bytes were handed over.
    #[inline]
    pub fn take_to(&mut self, into: &mut Vec<Bytes>, tail: &mut BytesMut) -> usize {
        let added = self.len();
        if added == 0 {
            return 0;
        }
        if !tail.is_empty() {
            into.push(tail.split().freeze());
        }
        into.append(&mut self.chunks);
        self.chunks_len = 0;
        std::mem::swap(&mut self.out, tail);
        added
    }

    /// Everything queued, in order, as one list (for tests and simple drivers).
    #[inline]
    pub fn take_all(&mut self) -> Vec<Bytes> {
        let mut into = Vec::new();
        let mut tail = BytesMut::new();
        self.take_to(&mut into, &mut tail);
        if !tail.is_empty() {
            into.push(tail.freeze());
        }
        into
    }

    /// Drop everything queued (the connection is gone).
    #[inline]
    pub fn clear(&mut self) {
        self.out.clear();
        self.chunks.clear();
        self.chunks_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn small_frames_share_the_buffer_and_large_payloads_are_chunks_in_order() {
        let mut o = Outbox::new();
        o.write_frame(|b| b.put_slice(b"one"));
        let big = Bytes::from(vec![7u8; ZERO_COPY_MIN]);
        let start = o.begin_frame();
        o.buf().put_u8(9);
        o.push_payload(start, big.clone());
        o.write_frame(|b| b.put_slice(b"two"));
        assert_eq!(o.len(), 4 + 3 + 4 + 1 + ZERO_COPY_MIN + 4 + 3);
        let parts = o.take_all();
        assert!(o.is_empty());
        // The large payload was not copied: one of the parts is it.
        assert!(parts.iter().any(|p| p.as_ptr() == big.as_ptr()));
        let mut want = Vec::new();
        want.extend_from_slice(&3u32.to_be_bytes());
        want.extend_from_slice(b"one");
        want.extend_from_slice(&((1 + ZERO_COPY_MIN) as u32).to_be_bytes());
        want.push(9);
        want.extend_from_slice(&big);
        want.extend_from_slice(&3u32.to_be_bytes());
        want.extend_from_slice(b"two");
        assert_eq!(concat(&parts), want);
    }

    #[test]
    fn take_to_keeps_order_with_a_tail_and_reuses_the_buffer() {
        let mut o = Outbox::new();
        let mut into = Vec::new();
        let mut tail = BytesMut::from(&b"earlier"[..]);
        assert_eq!(o.take_to(&mut into, &mut tail), 0);
        assert!(
            into.is_empty(),
            "nothing queued: the tail stays where it is"
        );
        o.queue_raw(b"hello");
        o.write_frame(|b| b.put_slice(b"x"));
        assert_eq!(o.take_to(&mut into, &mut tail), 10);
        assert_eq!(&into[0][..], b"earlier");
        assert_eq!(&tail[..], b"hello\0\0\0\x01x");
        o.clear();
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn reserve_frame_copies_only_small_payloads() {
        let mut o = Outbox::new();
        o.reserve_frame(10, 100);
        assert!(o.buf().capacity() >= 114);
        let mut o = Outbox::new();
        o.reserve_frame(10, ZERO_COPY_MIN);
        assert!(o.buf().capacity() < ZERO_COPY_MIN);
    }
}
