//! The hello decoder and negotiation on arbitrary bodies: never panics; a decoded hello
//! re-encodes to the same 16 bytes; negotiation agrees only on the same version.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pb_proto::handshake::{Features, HELLO_LEN, Hello, PROTOCOL_VERSION};

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = Hello::decode(data) else {
        return;
    };
    assert_eq!(data.len(), HELLO_LEN);
    let mut out = BytesMut::new();
    hello.encode(&mut out);
    // The reserved bytes are ignored on input and zero on output.
    assert_eq!(&out[..6], &data[..6]);
    assert_eq!(&out[8..], &data[8..]);
    let ours = Hello::ours(Features(u64::MAX));
    match ours.negotiate(&hello) {
        Ok(features) => {
            assert_eq!(hello.version, PROTOCOL_VERSION);
            assert_eq!(features, hello.features);
        }
        Err(_) => assert_ne!(hello.version, PROTOCOL_VERSION),
    }
});
