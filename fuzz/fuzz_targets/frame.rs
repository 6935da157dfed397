//! The frame decoder fed arbitrary bytes in arbitrary chunks: it never panics, never consumes
//! bytes of an incomplete frame, never asks for more buffer than a chunk, and the frames it
//! yields (whole, or split into a head and a tail read apart) re-encode to exactly the bytes
//! they were decoded from.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pb_proto::frame::{
    Decoded, FrameDecoder, HEADER_LEN, SPLIT_FLAG, SPLIT_HEADER_LEN, TAIL_MARKER, Tail,
    encode_frame,
};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    // The limit, the chunk size and whether split frames are accepted come from the input.
    let max = 1usize << (cfg & 0x0f).min(20);
    let chunk = usize::from(cfg >> 5) * 7 + 1;
    let mut decoder = FrameDecoder::new(max);
    decoder.accept_tails(cfg & 0x10 != 0);
    let mut buf = BytesMut::new();
    let mut consumed = BytesMut::new();
    // A split frame whose tail is being read: its head, and the tail so far.
    let mut reading: Option<(bytes::Bytes, Tail)> = None;
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        assert!(decoder.reserve_hint(&buf) <= 64 * 1024);
        loop {
            if let Some((head, mut tail)) = reading.take() {
                let n = tail.missing().min(buf.len());
                tail.buf().extend_from_slice(&buf.split_to(n));
                if !tail.is_complete() {
                    reading = Some((head, tail));
                    break;
                }
                put_split(&mut consumed, &head, &tail.finish());
                continue;
            }
            let before = buf.len();
            match decoder.next(&mut buf) {
                Ok(Some(Decoded::Frame(frame))) => {
                    assert!(frame.len() <= max);
                    assert_eq!(before - buf.len(), HEADER_LEN + frame.len());
                    encode_frame(&frame, &mut consumed);
                }
                Ok(Some(Decoded::Split { head, tail_len })) => {
                    assert!(cfg & 0x10 != 0, "a split frame only when asked for");
                    assert!(head.len() + tail_len <= max);
                    assert!(head.ends_with(&TAIL_MARKER) && tail_len > 0);
                    assert_eq!(before - buf.len(), SPLIT_HEADER_LEN + head.len());
                    match Tail::start(tail_len, &mut buf) {
                        Ok(Err(tail)) => put_split(&mut consumed, &head, &tail),
                        Ok(Ok(tail)) => {
                            assert!(buf.is_empty());
                            reading = Some((head, tail));
                            break;
                        }
                        Err(_) => return,
                    }
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "nothing consumed while incomplete");
                    break;
                }
                Err(_) => return,
            }
        }
    }
    // Every byte consumed was a whole frame, in order.
    assert_eq!(&consumed[..], &rest[..consumed.len()]);
});

/// A split frame as the wire carries it.
fn put_split(out: &mut BytesMut, head: &[u8], tail: &[u8]) {
    out.put_u32(SPLIT_FLAG | (head.len() + tail.len()) as u32);
    out.put_u32(tail.len() as u32);
    out.put_slice(head);
    out.put_slice(tail);
}
