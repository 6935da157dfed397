//! The message decoder on arbitrary frame bodies: never panics, and whatever decodes encodes
//! back to a body that decodes to the same message.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pb_proto::message::{Message, MessageLimits};

fuzz_target!(|data: &[u8]| {
    let limits = MessageLimits::default();
    let Ok(m1) = Message::decode(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    let mut e1 = BytesMut::new();
    m1.encode(&mut e1);
    let m2 = Message::decode(e1.clone().freeze(), &limits).expect("a re-encoded message decodes");
    let mut e2 = BytesMut::new();
    m2.encode(&mut e2);
    assert_eq!(e1, e2, "encoding is stable");
    // Fault texts are decoded lossily (and may grow past the cap when re-encoded); everything
    // else round-trips exactly.
    if !matches!(m1, Message::Fault { .. }) {
        assert_eq!(m1, m2);
    }
});
