//! The hello decoder and negotiation on arbitrary bodies: never panics; a decoded hello
//! re-encodes to the same bytes, up to what its flags announce; negotiation agrees only on the
//! same version.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pb_proto::handshake::{Features, HELLO_LEN, HELLO_MAX_LEN, Hello, PROTOCOL_VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = Hello::decode(data) else {
        return;
    };
    assert!((HELLO_LEN..=HELLO_MAX_LEN).contains(&data.len()));
    assert_eq!(
        hello.limits.is_some(),
        hello.features.contains(Features::LIMITS)
    );
    assert_eq!(
        hello.limits.is_some_and(|l| l.max_call_bytes.is_some()),
        hello.features.contains(Features::WINDOW)
    );
    let mut out = BytesMut::new();
    hello.encode(&mut out);
    assert_eq!(out.len(), hello.encoded_len());
    // The reserved bytes are ignored on input and zero on output; bytes past what the flags
    // announce are ignored too.
    assert_eq!(&out[..6], &data[..6]);
    assert_eq!(&out[8..], &data[8..out.len()]);
    let ours = Hello::ours(Features(u64::MAX));
    match ours.negotiate(&hello) {
        Ok(features) => {
            assert_eq!(hello.version, PROTOCOL_VERSION);
            // `ours` carries no limits, so it offers every flag but those two.
            let announced = Features::LIMITS.0 | Features::WINDOW.0;
            assert_eq!(features, Features(hello.features.0 & !announced));
        }
        Err(_) => assert_ne!(hello.version, PROTOCOL_VERSION),
    }
});
