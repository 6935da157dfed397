//! Banana and Jelly on arbitrary bytes in arbitrary chunks (the first byte picks the chunk size
//! and the dialect): the decoder never panics and never holds more than its limits allow;
//! every expression it yields re-encodes to bytes that decode and encode to the same bytes; every
//! message that unjellies jellies again to an equivalent graph.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pb_proto::banana::{BananaCodec, BananaConfig, Dialect, decode_complete};
use pb_proto::jelly::{JellyConfig, from_sexp, to_sexp};

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let dialect = if control & 0x80 != 0 { Dialect::Pb } else { Dialect::None };
    let config = BananaConfig::default()
        .size_limit(4096)
        .max_depth(32)
        .max_expression_size(1 << 20);
    let mut codec = BananaCodec::new(config.clone());
    codec.set_dialect(dialect);
    let jelly = JellyConfig::default();
    let mut input = BytesMut::new();
    for piece in stream.chunks(usize::from(control & 0x3f) + 1) {
        input.extend_from_slice(piece);
        loop {
            let element = match codec.decode(&mut input) {
                Ok(Some(element)) => element,
                Ok(None) => break,
                Err(_) => return,
            };
            let mut bytes = BytesMut::new();
            codec.encode(&element, &mut bytes).expect("a decoded element encodes");
            let again = decode_complete(&bytes, config.clone(), dialect)
                .expect("a re-encoded element decodes");
            // Compared as bytes: a NaN float is not equal to itself.
            let mut bytes2 = BytesMut::new();
            codec.encode(&again, &mut bytes2).expect("and encodes again");
            assert_eq!(bytes, bytes2, "Banana round-trips");
            if let Ok(graph) = from_sexp(&element, &jelly) {
                let sexp = to_sexp(&graph, &jelly).expect("an unjellied graph jellies");
                let graph2 = from_sexp(&sexp, &jelly).expect("and unjellies again");
                assert!(graph.equivalent(&graph2), "Jelly round-trips");
            }
        }
    }
});
