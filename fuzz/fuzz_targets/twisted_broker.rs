//! Twisted PB's broker (pb-proto's `twisted::Broker`) on arbitrary bytes in arbitrary chunks,
//! as a server and as a client (the first byte picks the role, the chunk size and whether a
//! valid handshake comes first): it never panics; every call it hands out is finished or
//! forgotten, answers are given back for our own calls only, and its tables stay within their
//! limits; what it queues for the peer always decodes as Banana.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pb_proto::banana::{BananaCodec, BananaConfig, Dialect};
use pb_proto::jelly::{JellyConfig, from_sexp};
use pb_proto::twisted::{Broker, Event, PbConfig, Role, Target};

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let role = if control & 0x80 != 0 { Role::Server } else { Role::Client };
    let banana = BananaConfig::default()
        .size_limit(4096)
        .max_depth(32)
        .max_expression_size(1 << 20);
    let config = PbConfig::default()
        .banana(banana)
        .max_exports(8)
        .max_imports(8)
        .max_in_flight_calls(4);
    let mut broker: Broker<u32, u32> = Broker::new(role, config);
    broker.set_name(Bytes::from_static(b"root"), 0);
    let mut input = BytesMut::new();
    if control & 0x40 != 0 {
        // A valid handshake first, so that the fuzzer reaches the messages.
        match role {
            Role::Server => input.extend_from_slice(b"\x02\x82pb"),
            Role::Client => input.extend_from_slice(b"\x02\x80\x02\x82pb\x04\x82none"),
        }
    }
    // Some of our own calls and exports, for answers and releases to find.
    let mut ours = Vec::new();
    // Everything it queues decodes (the handshake's expressions use no vocabulary, so one
    // decoder in the `pb` dialect reads it all).
    let mut out = BytesMut::new();
    let mut decoder = BananaCodec::new(BananaConfig::default());
    decoder.set_dialect(Dialect::Pb);
    let mut check_output = |broker: &mut Broker<u32, u32>| {
        out.extend_from_slice(&broker.take_output());
        while decoder
            .decode(&mut out)
            .expect("what the broker queues is Banana")
            .is_some()
        {}
    };
    for piece in stream.chunks(usize::from(control & 0x1f) + 1) {
        input.extend_from_slice(piece);
        loop {
            match broker.poll_input(&mut input) {
                Ok(Some(Event::Call(call))) => {
                    let _ = from_sexp(&call.args, &JellyConfig::default());
                    if call.answer {
                        broker
                            .finish_call(call.request, Ok(b"\x01\x81"))
                            .expect("a small answer is sent");
                    } else {
                        broker.forget_call(call.request);
                    }
                }
                Ok(Some(Event::Answer { request, waiter, .. })) => {
                    assert!(ours.contains(&request), "an answer to a call we made");
                    assert!(waiter.is_some());
                }
                Ok(Some(Event::Ready)) => {
                    if ours.is_empty() {
                        let id = broker
                            .start_call(&Target::Luid(1), b"m", b"\x01\x80\x0b\x87", Some(7), false)
                            .expect("a call starts");
                        ours.push(id);
                        let _ = broker.export(3);
                        let _ = broker.export_cache(4);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    assert!(broker.export_count() <= 8 && broker.import_count() <= 8);
                    return;
                }
            }
            assert!(broker.running_count() == 0, "every call is finished at once here");
            assert!(broker.export_count() <= 8);
            check_output(&mut broker);
        }
    }
    let (_waiters, _objects) = broker.close();
});
