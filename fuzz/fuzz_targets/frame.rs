//! The frame decoder fed arbitrary bytes in arbitrary chunks: it never panics, never consumes
//! bytes of an incomplete frame, never asks for more buffer than a chunk, and the frames it
//! yields re-encode to exactly the bytes they were decoded from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pb_proto::frame::{FrameDecoder, HEADER_LEN, encode_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    // The limit and the chunk size come from the input.
    let max = 1usize << (cfg & 0x0f).min(20);
    let chunk = usize::from(cfg >> 4) * 7 + 1;
    let decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut consumed = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        assert!(decoder.reserve_hint(&buf) <= 64 * 1024);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max);
                    assert_eq!(before - buf.len(), HEADER_LEN + frame.len());
                    encode_frame(&frame, &mut consumed);
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
