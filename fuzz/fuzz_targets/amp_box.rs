//! The AMP box decoder fed arbitrary bytes in arbitrary chunks, under small limits: never
//! panics, consumes nothing while a box is incomplete, and every box it yields re-encodes to
//! bytes that decode to the same box.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pb_proto::amp::codec::{BoxCodec, BoxCodecConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let config = BoxCodecConfig::default()
        .max_keys_per_box(usize::from(cfg & 0x0f) + 1)
        .max_box_bytes(64 << (cfg >> 4));
    let chunk = usize::from(cfg % 7) * 13 + 1;
    let mut codec = BoxCodec::new(config);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(b)) => {
                    assert!(b.len() <= config.max_keys_per_box);
                    assert!(before - buf.len() <= config.max_box_bytes);
                    let mut out = BytesMut::new();
                    b.encode(&mut out).expect("a decoded box encodes");
                    // Under the same limits: re-encoding drops repeated keys, so the box is no
                    // larger than the bytes it came from. (The default limits would refuse a
                    // box that `config` allows: up to 16 keys of 64 KiB values under a 2 MiB
                    // max_box_bytes is more than the default 1 MiB.)
                    let mut again = BoxCodec::new(config);
                    let b2 = again
                        .decode(&mut out)
                        .expect("re-encoded box decodes")
                        .expect("complete");
                    assert!(out.is_empty());
                    assert_eq!(b, b2);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "nothing consumed while incomplete");
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
