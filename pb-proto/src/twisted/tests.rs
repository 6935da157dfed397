//! Two brokers talking through buffers, and Twisted's own bytes.

use super::*;
use crate::banana::encode_to_bytes;

type B = Broker<&'static str, u32>;

/// Moves everything queued on `from` into `to`, returning the events it caused.
fn pump(from: &mut B, to: &mut B) -> Vec<Event<&'static str, u32>> {
    let mut buf = BytesMut::from(&from.take_output()[..]);
    let mut events = Vec::new();
    while let Some(e) = to.poll_input(&mut buf).expect("valid input") {
        events.push(e);
    }
    assert!(buf.is_empty());
    events
}

fn pair() -> (B, B) {
    let mut server = B::new(Role::Server, PbConfig::default());
    let mut client = B::new(Role::Client, PbConfig::default());
    server.set_name(Bytes::from_static(b"root"), "root");
    assert_eq!(pump(&mut server, &mut client), vec![Event::Ready]);
    assert_eq!(pump(&mut client, &mut server), vec![Event::Ready]);
    assert!(pump(&mut server, &mut client).is_empty());
    assert!(server.is_ready() && client.is_ready());
    assert_eq!(server.peer_version(), Some(6));
    assert_eq!(client.peer_version(), Some(6));
    (server, client)
}

fn args(items: Vec<Element>, codec: &BananaCodec) -> Bytes {
    let mut l = vec![word(b"tuple")];
    l.extend(items);
    let mut out = BytesMut::new();
    codec.encode(&Element::List(l), &mut out).unwrap();
    out.freeze()
}

/// Call the peer's `root.add()` without asking for an answer.
fn call_root_without_answer(client: &mut B) {
    let args = args(vec![], client.encoder());
    client
        .start_call(
            &Target::Name(Bytes::from_static(b"root")),
            b"add",
            &args,
            None,
            false,
        )
        .unwrap();
}

#[test]
fn the_handshake_is_twisteds_bytes() {
    let mut server = B::new(Role::Server, PbConfig::default());
    assert_eq!(&server.take_output()[..], b"\x02\x80\x02\x82pb\x04\x82none");
    let mut client = B::new(Role::Client, PbConfig::default());
    let mut offer = BytesMut::from(&b"\x02\x80\x02\x82pb\x04\x82none"[..]);
    assert_eq!(client.poll_input(&mut offer).unwrap(), Some(Event::Ready));
    // The choice, then ["version", 6] with "version" as vocabulary word 19.
    assert_eq!(
        &client.take_output()[..],
        b"\x02\x82pb\x02\x80\x13\x87\x06\x81"
    );
}

#[test]
fn a_call_is_answered_and_its_bytes_are_twisteds() {
    let (mut server, mut client) = pair();
    let a = args(
        vec![Element::List(vec![
            Element::from("unicode"),
            Element::from("world"),
        ])],
        client.encoder(),
    );
    let id = client
        .start_call(&Target::Luid(2), b"hello", &a, Some(7), false)
        .unwrap();
    assert_eq!(id, 1);
    // The call of the reference's capture with request id 1 (the capture's is 3).
    assert_eq!(
        &client.out[..],
        b"\x07\x80\x1a\x87\x01\x81\x02\x81\x05\x82hello\x01\x81\x02\x80\x0b\x87\
          \x02\x80\x07\x82unicode\x05\x82world\x01\x80\x05\x87"
    );
    // Luid 2 is not exported by the server: an error answer, the connection goes on.
    assert!(pump(&mut client, &mut server).is_empty());
    let events = pump(&mut server, &mut client);
    let [
        Event::Answer {
            request,
            waiter: Some(7),
            result: Err(failure),
        },
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(*request, id);
    let text = format!("{failure:?}");
    assert!(text.contains("Invalid Object ID"), "{text}");

    // The root by name.
    let id = client
        .start_call(
            &Target::Name(Bytes::from_static(b"root")),
            b"add",
            &args(vec![Element::Int(1), Element::Int(2)], client.encoder()),
            Some(9),
            false,
        )
        .unwrap();
    assert!(client.set_waiter(id, 10));
    let events = pump(&mut client, &mut server);
    let [Event::Call(call)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (call.object, &call.method[..], call.answer),
        ("root", &b"add"[..], true)
    );
    assert_eq!(server.running_count(), 1);
    // The call's message counts while it runs: a few dozen bytes here.
    let held = server.running_bytes();
    assert!((20..100).contains(&held), "{held}");
    assert!(!server.calls_at_cap());
    let mut three = BytesMut::new();
    server
        .encoder()
        .encode(&Element::Int(3), &mut three)
        .unwrap();
    server.finish_call(call.request, Ok(&three)).unwrap();
    assert_eq!((server.running_count(), server.running_bytes()), (0, 0));
    // The waiter left last is the one given back.
    assert_eq!(
        pump(&mut server, &mut client),
        vec![Event::Answer {
            request: id,
            waiter: Some(10),
            result: Ok(Element::Int(3))
        }]
    );
    assert!(!client.set_waiter(id, 11));
    assert!(!client.is_pending(id));
}

#[test]
fn a_call_without_answer_gets_none_and_holds_nothing() {
    let (mut server, mut client) = pair();
    call_root_without_answer(&mut client);
    assert_eq!(client.pending_count(), 0);
    let events = pump(&mut client, &mut server);
    let [Event::Call(call)] = &events[..] else {
        panic!()
    };
    assert!(!call.answer);
    assert_eq!(
        server.running_count(),
        1,
        "a call without answer counts while it runs"
    );
    server.forget_call(call.request);
    assert_eq!(server.running_count(), 0);
    assert!(!server.has_output());
}

#[test]
fn a_request_id_reused_while_its_call_runs_counts_each_message() {
    let (mut server, mut client) = pair();
    call_root_without_answer(&mut client);
    // The same message twice: the same request id while the first call still runs. Each
    // counts, or a peer reusing one id could run any number of calls past the caps.
    let message = client.take_output();
    let mut input = BytesMut::from(&[&message[..], &message[..]].concat()[..]);
    let mut calls = Vec::new();
    while let Some(e) = server.poll_input(&mut input).expect("valid input") {
        calls.push(e);
    }
    let [Event::Call(first), Event::Call(second)] = &calls[..] else {
        panic!("{calls:?}")
    };
    assert_eq!(first.request, second.request);
    assert_eq!(
        (server.running_count(), server.running_bytes()),
        (2, 2 * message.len())
    );
    server.forget_call(second.request);
    assert_eq!(server.running_count(), 1);
    server.forget_call(first.request);
    assert_eq!(
        (server.running_count(), server.running_bytes()),
        (0, 0),
        "nothing left counted"
    );
}

/// `["message", request, target, "x", 1, ["tuple"], ["dictionary"]]`, a call with any request
/// id, as a hostile peer may send it.
fn raw_message(codec: &BananaCodec, request: i64, target: Element) -> BytesMut {
    let m = Element::List(vec![
        word(b"message"),
        Element::Int(request),
        target,
        word(b"x"),
        Element::Int(1),
        Element::List(vec![word(b"tuple")]),
        Element::List(vec![word(b"dictionary")]),
    ]);
    let mut out = BytesMut::new();
    codec.encode(&m, &mut out).unwrap();
    out
}

#[test]
fn a_call_refused_under_the_id_of_a_running_call_leaves_that_call_counted() {
    let mut server = B::new(Role::Server, PbConfig::default().max_in_flight_calls(2));
    let mut client = B::new(Role::Client, PbConfig::default());
    server.set_name(Bytes::from_static(b"root"), "root");
    pump(&mut server, &mut client);
    pump(&mut client, &mut server);
    pump(&mut server, &mut client);
    let mut running = 0;
    let mut input = BytesMut::new();
    for request in 10..15 {
        // A call to the root, which runs (its handler waits), then one under the same id to
        // an object that does not exist, refused with `Invalid Object ID`.
        input.extend_from_slice(&raw_message(client.encoder(), request, word(b"root")));
        input.extend_from_slice(&raw_message(client.encoder(), request, Element::Int(999)));
        while let Some(e) = server.poll_input(&mut input).expect("valid input") {
            if let Event::Call(_) = e {
                running += 1;
            }
        }
        assert!(
            running <= 2,
            "{running} calls run, over max_in_flight_calls"
        );
        assert_eq!(
            server.running_count(),
            running,
            "the count of running calls"
        );
    }
    assert_eq!(running, 2, "the others wait at the cap");
    assert!(!input.is_empty());
}

/// A server that runs one of the client's calls at a time, each side serving a root.
fn capped_pair() -> (B, B) {
    let mut server = B::new(Role::Server, PbConfig::default().max_in_flight_calls(1));
    let mut client = B::new(Role::Client, PbConfig::default());
    server.set_name(Bytes::from_static(b"root"), "root");
    pump(&mut server, &mut client);
    pump(&mut client, &mut server);
    pump(&mut server, &mut client);
    client.set_name(Bytes::from_static(b"root"), "mind");
    (server, client)
}

/// The client calls `x` on the root of a [`capped_pair`]'s server, which runs it (its cap):
/// what is left of the server's input, and the running call.
fn one_running(server: &mut B, client: &mut B, a: &[u8]) -> (BytesMut, Incoming<&'static str>) {
    let root = Target::Name(Bytes::from_static(b"root"));
    client.start_call(&root, b"x", a, Some(1), false).unwrap();
    let mut input = BytesMut::from(&client.take_output()[..]);
    let Some(Event::Call(first)) = server.poll_input(&mut input).unwrap() else {
        panic!("a call")
    };
    (input, first)
}

#[test]
fn at_the_cap_answers_to_our_calls_go_through_and_the_peers_calls_wait() {
    let (mut server, mut client) = capped_pair();
    let root = Target::Name(Bytes::from_static(b"root"));
    let a = args(vec![], client.encoder());
    // The server runs one call: at its cap, it reads nothing more while it awaits nothing.
    client.start_call(&root, b"x", &a, Some(1), false).unwrap();
    client.start_call(&root, b"y", &a, Some(2), false).unwrap();
    let mut input = BytesMut::from(&client.take_output()[..]);
    let Some(Event::Call(first)) = server.poll_input(&mut input).unwrap() else {
        panic!("a call")
    };
    assert_eq!(server.poll_input(&mut input).unwrap(), None);
    assert!(!input.is_empty(), "the second call waits, unread");
    assert!(!server.wants_input());
    // The running call calls the client back: the server reads on for the answer, which goes
    // through; the client's next call, behind it on the wire or not, waits.
    let b = args(vec![], server.encoder());
    let back = server
        .start_call(&root, b"ping", &b, Some(7), false)
        .unwrap();
    assert!(server.wants_input());
    let Event::Call(ping) = pump(&mut server, &mut client).remove(0) else {
        panic!("the callback")
    };
    client.finish_call(ping.request, Ok(&b)).unwrap();
    input.extend_from_slice(&client.take_output());
    let events: Vec<_> = std::iter::from_fn(|| server.poll_input(&mut input).unwrap()).collect();
    assert!(
        matches!(&events[..], [Event::Answer { request, waiter: Some(7), result: Ok(_) }] if *request == back),
        "{events:?}"
    );
    assert_eq!(server.held_count(), 1, "the second call, held back");
    // Once the first call ends, the held one runs, before anything newer.
    server.forget_call(first.request);
    assert!(
        matches!(server.poll_input(&mut input).unwrap(), Some(Event::Call(c)) if c.request != first.request)
    );
    assert_eq!(server.held_count(), 0);
}

#[test]
fn a_held_call_to_no_object_is_answered_and_the_next_held_one_runs_in_the_same_poll() {
    let (mut server, mut client) = capped_pair();
    let root = Target::Name(Bytes::from_static(b"root"));
    let a = args(vec![], client.encoder());
    let (mut input, first) = one_running(&mut server, &mut client, &a);
    // At the cap, reading on for the answer to a call of the server's: the client's next calls
    // are held, one to an object the server does not have, then one to its root.
    let b = args(vec![], server.encoder());
    server
        .start_call(&root, b"ping", &b, Some(7), false)
        .unwrap();
    client
        .start_call(&Target::Luid(99), b"gone", &a, Some(2), false)
        .unwrap();
    client.start_call(&root, b"y", &a, Some(3), false).unwrap();
    let waiting = client.pending_count();
    input.extend_from_slice(&client.take_output());
    assert_eq!(server.poll_input(&mut input).unwrap(), None);
    assert_eq!(server.held_count(), 2);
    // Once the first call ends, the call to no object is answered here (no event) and the
    // poll goes on to the held call behind it.
    server.forget_call(first.request);
    let Some(Event::Call(y)) = server.poll_input(&mut input).unwrap() else {
        panic!("the held call to the root")
    };
    assert_eq!(&y.method[..], b"y");
    assert_eq!(server.held_count(), 0);
    // The client gets `Invalid Object ID` for its call to no object.
    let events = pump(&mut server, &mut client);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Answer {
                waiter: Some(2),
                result: Err(_),
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(client.pending_count(), waiting - 1);
}

#[test]
fn exports_are_counted_per_send_and_freed_by_decrefs() {
    let (mut server, mut client) = pair();
    assert_eq!(server.export("counter").unwrap(), 1);
    assert_eq!(server.export("counter").unwrap(), 1);
    assert_eq!(server.export("other").unwrap(), 2);
    assert_eq!(server.export_count(), 2);
    client.note_import(1).unwrap();
    client.note_import(1).unwrap();
    client.release(1, 1, false);
    assert!(pump(&mut client, &mut server).is_empty());
    assert_eq!(server.export_count(), 2);
    client.release(1, 5, false); // only the one still owed is sent
    assert_eq!(
        pump(&mut client, &mut server),
        vec![Event::Unexported {
            object: "counter",
            luid: 1,
            kind: ExportKind::Reference
        }]
    );
    assert_eq!(server.export_count(), 1);
    assert_eq!(client.import_count(), 0);
    // A new export of the same object gets a new luid.
    assert_eq!(server.export("counter").unwrap(), 3);
}

#[test]
fn caches_are_decached_then_uncached() {
    let (mut server, mut client) = pair();
    let first = server.export_cache("cache").unwrap();
    assert_eq!((first.luid, first.with_state, first.new), (1, true, true));
    server.note_state_queued(1);
    let again = server.export_cache("cache").unwrap();
    assert_eq!((again.luid, again.with_state, again.new), (1, false, false));
    // The same object as a reference is another export.
    assert_eq!(server.export("cache").unwrap(), 2);
    client.note_import(1).unwrap();
    client.note_import(1).unwrap();
    client.release(1, 2, true);
    assert_eq!(
        pump(&mut client, &mut server),
        vec![Event::Unexported {
            object: "cache",
            luid: 1,
            kind: ExportKind::Cache
        }]
    );
    assert_eq!(pump(&mut server, &mut client), vec![Event::Uncached(1)]);
}

#[test]
fn a_cachemessage_is_an_observe_event() {
    let (mut server, mut client) = pair();
    let a = args(vec![Element::Int(4)], server.encoder());
    server
        .start_call(&Target::Luid(5), b"set", &a, Some(1), true)
        .unwrap();
    let events = pump(&mut server, &mut client);
    let [Event::Observe(o)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!((o.luid, &o.method[..], o.answer), (5, &b"set"[..], true));
}

#[test]
fn violations_are_counted_then_close() {
    let (mut server, mut client) = pair();
    let config = server.config().max_violations;
    let stray = encode_to_bytes(
        &Element::List(vec![word(b"answer"), Element::Int(99), Element::Int(1)]),
        Dialect::Pb,
    )
    .unwrap();
    for _ in 0..config {
        let mut buf = BytesMut::from(&stray[..]);
        assert_eq!(client.poll_input(&mut buf).unwrap(), None);
    }
    let mut buf = BytesMut::from(&stray[..]);
    assert!(matches!(
        client.poll_input(&mut buf),
        Err(PbError::Violations(_))
    ));
    assert!(client.is_closed());
    // A release of what is not exported counts too, and an unknown command is told so.
    let unknown =
        encode_to_bytes(&Element::List(vec![Element::from("frob")]), Dialect::Pb).unwrap();
    let mut buf = BytesMut::from(&unknown[..]);
    assert_eq!(server.poll_input(&mut buf).unwrap(), None);
    assert_eq!(
        &server.take_output()[..],
        &encode_to_bytes(
            &Element::List(vec![word(b"didNotUnderstand"), Element::from("frob")]),
            Dialect::Pb
        )
        .unwrap()[..]
    );
}

#[test]
fn with_the_most_violations_allowed_the_count_never_overflows() {
    let mut client = B::new(Role::Client, PbConfig::default().max_violations(u32::MAX));
    let mut server = B::new(Role::Server, PbConfig::default());
    pump(&mut server, &mut client);
    client.violations = u32::MAX - 1;
    let stray = encode_to_bytes(
        &Element::List(vec![word(b"answer"), Element::Int(99), Element::Int(1)]),
        Dialect::Pb,
    )
    .unwrap();
    for _ in 0..3 {
        let mut buf = BytesMut::from(&stray[..]);
        assert_eq!(client.poll_input(&mut buf).unwrap(), None);
    }
    assert_eq!(client.violations, u32::MAX);
    assert!(!client.is_closed());
}

#[test]
fn malformed_input_closes() {
    let (mut server, _client) = pair();
    for bad in [
        &b"\x05\x81"[..],                 // not a list
        &b"\x00\x80"[..],                 // empty
        &b"\x02\x80\x13\x87\x05\x81"[..], // version 5
        &b"\x01\x88"[..],                 // an invalid type byte
    ] {
        let mut s = B::new(Role::Server, PbConfig::default());
        let mut c = B::new(Role::Client, PbConfig::default());
        pump(&mut s, &mut c);
        pump(&mut c, &mut s);
        let mut buf = BytesMut::from(bad);
        assert!(s.poll_input(&mut buf).is_err(), "{bad:?}");
    }
    // A client choosing a dialect never offered.
    let mut s = B::new(Role::Server, PbConfig::default());
    let mut buf = BytesMut::from(&b"\x03\x82xyz"[..]);
    assert!(matches!(s.poll_input(&mut buf), Err(PbError::Dialect(_))));
    // 65 prefix bytes.
    let mut buf = BytesMut::from(&[1u8; 65][..]);
    assert!(server.poll_input(&mut buf).is_err());
}

#[test]
fn limits_hold_on_our_side() {
    let config = PbConfig::default()
        .max_exports(1)
        .max_imports(1)
        .max_in_flight_calls(1);
    let mut server = B::new(Role::Server, config);
    let mut client = B::new(Role::Client, PbConfig::default());
    server.set_name(Bytes::from_static(b"root"), "root");
    pump(&mut server, &mut client);
    pump(&mut client, &mut server);
    pump(&mut server, &mut client);
    assert_eq!(server.export("a").unwrap(), 1);
    assert_eq!(server.export("b"), Err(SendError::TooManyExports(1)));
    server.note_import(1).unwrap();
    assert_eq!(server.note_import(2), Err(SendError::TooManyImports(1)));
    let root = Target::Name(Bytes::from_static(b"root"));
    let a = args(vec![], client.encoder());
    // (A call over `max_in_flight_calls` waits, unread, until one ends:
    // `at_the_cap_answers_to_our_calls_go_through_and_the_peers_calls_wait`.)
    // A method name over the size limit is refused before anything is queued.
    let long = vec![b'm'; crate::banana::SIZE_LIMIT + 1];
    let before = client.out.len();
    assert!(client.start_call(&root, &long, &a, Some(4), false).is_err());
    assert_eq!(client.out.len(), before);
}

#[test]
fn a_message_is_held_to_the_peers_limits_as_a_whole() {
    // The peer's decoder counts the message's own list and elements: arguments that fit alone
    // can make a message it refuses. Such a message is not queued, and waits for nothing.
    let banana = BananaConfig::default()
        .max_depth(4)
        .max_expression_size(20 * std::mem::size_of::<Element>());
    let config = PbConfig::default().banana(banana);
    let mut server = B::new(Role::Server, config);
    let mut client = B::new(Role::Client, config);
    server.set_name(Bytes::from_static(b"root"), "root");
    pump(&mut server, &mut client);
    pump(&mut client, &mut server);
    pump(&mut server, &mut client);
    let root = Target::Name(Bytes::from_static(b"root"));
    let before = client.out.len();
    // ["tuple", [[[1]]]]: four lists deep alone, five in the message.
    let deep = args(
        vec![Element::List(vec![Element::List(vec![Element::List(
            vec![Element::Int(1)],
        )])])],
        client.encoder(),
    );
    assert_eq!(
        client.start_call(&root, b"x", &deep, Some(1), false),
        Err(SendError::Banana(BananaCodecError::TooDeep { limit: 4 }))
    );
    // Twelve elements alone; with the message's eight and its strings ("root", "x"), twenty
    // elements and five bytes.
    let wide = args(vec![Element::Int(1); 10], client.encoder());
    assert!(matches!(
        client.start_call(&root, b"x", &wide, Some(1), false),
        Err(SendError::Banana(
            BananaCodecError::ExpressionTooLarge { .. }
        ))
    ));
    assert_eq!(client.out.len(), before);
    assert_eq!(client.pending_count(), 0);
    // Within both, the call goes, and the peer takes it.
    let fits = args(vec![Element::Int(1); 9], client.encoder());
    let id = client
        .start_call(&root, b"x", &fits, Some(1), false)
        .unwrap();
    let events = pump(&mut client, &mut server);
    let [Event::Call(call)] = &events[..] else {
        panic!("{events:?}")
    };
    // An answer is held to them too: refused, nothing queued, the call still to answer.
    let before = server.out.len();
    // ["answer", id, ["tuple", 1 × 16]]: twenty-one elements.
    let answer = args(vec![Element::Int(1); 16], server.encoder());
    assert!(matches!(
        server.finish_call(call.request, Ok(&answer)),
        Err(SendError::Banana(
            BananaCodecError::ExpressionTooLarge { .. }
        ))
    ));
    assert_eq!(server.out.len(), before);
    let answer = args(vec![Element::Int(1); 15], server.encoder());
    server.finish_call(call.request, Ok(&answer)).unwrap();
    let events = pump(&mut server, &mut client);
    assert!(
        matches!(&events[..], [Event::Answer { request, .. }] if *request == id),
        "{events:?}"
    );
}

#[test]
fn close_gives_back_waiters_and_exports_and_refuses_more() {
    let (mut server, mut client) = pair();
    let a = args(vec![], client.encoder());
    client
        .start_call(&Target::Luid(1), b"x", &a, Some(1), false)
        .unwrap();
    client.export("mind").unwrap();
    let (waiters, objects) = client.close();
    assert_eq!((waiters, objects), (vec![1], vec!["mind"]));
    assert_eq!(
        client.start_call(&Target::Luid(1), b"x", &a, Some(1), false),
        Err(SendError::Closed)
    );
    assert!(server.finish_call(1, Ok(b"\x01\x81")).is_ok());
}

#[test]
fn an_abandoned_call_still_gives_its_answer_out() {
    let (mut server, mut client) = pair();
    let root = Target::Name(Bytes::from_static(b"root"));
    let id = client
        .start_call(&root, b"x", &args(vec![], client.encoder()), Some(1), false)
        .unwrap();
    client.abandon(id);
    let events = pump(&mut client, &mut server);
    let [Event::Call(call)] = &events[..] else {
        panic!()
    };
    server.finish_call(call.request, Ok(b"\x01\x81")).unwrap();
    // The answer still comes out (its references must be released), with no one to wake.
    assert_eq!(
        pump(&mut server, &mut client),
        vec![Event::Answer {
            request: id,
            waiter: None,
            result: Ok(Element::Int(1))
        }]
    );
    assert_eq!(client.pending_count(), 0);
}

#[test]
fn the_failure_is_what_twisted_reads() {
    let mut codec = BananaCodec::default();
    codec.set_dialect(Dialect::Pb);
    let bytes = error_failure(
        &codec,
        b"twisted.spread.pb.Error",
        "boom",
        &[b"twisted.spread.pb.Error"],
    )
    .unwrap();
    let graph = crate::jelly::decode(
        &bytes,
        &JellyConfig::default(),
        BananaConfig::default(),
        Dialect::Pb,
    )
    .unwrap();
    let crate::jelly::Value::Instance { tag, state } = graph.root() else {
        panic!()
    };
    assert_eq!(&tag[..], b"twisted.spread.pb.CopyableFailure");
    assert_eq!(state.get("value"), Some(&crate::jelly::Value::from("boom")));
    assert_eq!(
        state.get("type"),
        Some(&crate::jelly::Value::Bytes(Bytes::from_static(
            b"twisted.spread.pb.Error"
        )))
    );
    // What Twisted's `CopiedFailure` reads besides (its `getTracebackObject()` reads `tb`).
    use crate::jelly::Value;
    for (key, value) in [
        ("frames", Value::List(Vec::new())),
        ("stack", Value::List(Vec::new())),
        ("tb", Value::None),
        ("count", Value::Int(0)),
        ("captureVars", Value::Bool(false)),
        ("unsafeTracebacks", Value::Bool(false)),
    ] {
        assert_eq!(state.get(key), Some(&value), "{key}");
    }
}

#[test]
fn a_send_taken_back_counts_as_a_release_and_tells_the_peer_nothing() {
    let (mut server, mut client) = pair();
    assert_eq!(server.export("counter").unwrap(), 1);
    assert_eq!(server.export("counter").unwrap(), 1);
    assert_eq!(server.export_cache("cache").unwrap().luid, 2);
    assert_eq!(server.unsend(1, false), Some(("counter", false)));
    // Not as that kind, or not exported: nothing.
    assert_eq!(server.unsend(1, true), None);
    assert_eq!(server.unsend(9, false), None);
    assert_eq!(server.unsend(1, false), Some(("counter", true)));
    assert_eq!(server.unsend(2, true), Some(("cache", true)));
    assert_eq!(server.export_count(), 0);
    assert!(
        pump(&mut server, &mut client).is_empty(),
        "nothing was sent"
    );
    // A new send of the object is a new export.
    assert_eq!(server.export("counter").unwrap(), 3);
}

#[test]
fn at_the_cap_an_answer_naming_a_copy_sent_in_a_held_call_waits_behind_it() {
    let (mut server, mut client) = capped_pair();
    let root = Target::Name(Bytes::from_static(b"root"));
    let a = args(vec![], client.encoder());
    // One call runs here (the cap), and ours waits for the client's answer.
    let (mut input, first) = one_running(&mut server, &mut client, &a);
    let b = args(vec![], server.encoder());
    let back = server
        .start_call(&root, b"ping", &b, Some(7), false)
        .unwrap();
    let Event::Call(ping) = pump(&mut server, &mut client).remove(0) else {
        panic!("the callback")
    };
    // The client's next call sends a Cacheable for the first time (held: at the cap); its
    // answer to ours names the copy (`cached`): it must not go first.
    let cache = Element::List(vec![
        word(b"cache"),
        5.into(),
        Element::List(vec![word(b"t")]),
    ]);
    let with_cache = args(vec![cache], client.encoder());
    client
        .start_call(&root, b"y", &with_cache, Some(2), false)
        .unwrap();
    let cached = args(
        vec![Element::List(vec![word(b"cached"), 5.into()])],
        client.encoder(),
    );
    client.finish_call(ping.request, Ok(&cached)).unwrap();
    input.extend_from_slice(&client.take_output());
    assert_eq!(server.poll_input(&mut input).unwrap(), None);
    assert_eq!(server.held_count(), 2, "the call, and the answer behind it");
    server.forget_call(first.request);
    assert!(matches!(
        server.poll_input(&mut input).unwrap(),
        Some(Event::Call(_))
    ));
    assert!(matches!(
        server.poll_input(&mut input).unwrap(),
        Some(Event::Answer { request, .. }) if request == back
    ));
}

#[test]
fn the_objects_a_raw_value_carries_are_found_as_jelly_reads_them() {
    let l = |items: Vec<Element>| Element::List(items);
    let flavor = |kind: &'static str, luid: i64| l(vec![kind.into(), luid.into()]);
    let value = l(vec![
        "tuple".into(),
        flavor("remote", 1),
        flavor("local", 2),
        // A dictionary's entries are pairs: a key that reads `remote` is no flavor's head.
        l(vec![
            "dictionary".into(),
            l(vec!["remote".into(), 3.into()]),
            l(vec![
                l(vec!["unicode".into(), "k".into()]),
                flavor("cached", 4),
            ]),
        ]),
        // A Cacheable's first send, its state walked too.
        l(vec![
            "pbtest.Thing".into(),
            5.into(),
            l(vec!["list".into(), flavor("remote", 6)]),
        ]),
        // A reference's number is no luid.
        l(vec!["reference".into(), 7.into(), flavor("remote", 8)]),
        // A builtin's two arguments are no Cacheable.
        l(vec!["list".into(), 9.into(), l(vec!["None".into()])]),
    ]);
    let mut sent = sent_objects(&value);
    sent.sort();
    assert_eq!(
        sent,
        [(1, false), (4, true), (5, true), (6, false), (8, false)]
    );
    assert_eq!(flavor_luids(&value, b"local"), [2]);
    assert_eq!(flavor_luids(&value, b"cached"), [4]);
}

#[test]
fn a_refused_receipt_is_released_without_being_counted() {
    let (mut server, mut client) = pair();
    assert_eq!(server.export("counter").unwrap(), 1);
    assert_eq!(server.export_cache("cache").unwrap().luid, 2);
    client.refuse(1, false);
    client.refuse(2, true);
    assert_eq!(client.import_count(), 0);
    let events = pump(&mut client, &mut server);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(server.export_count(), 0);
}

#[test]
fn every_send_of_a_cacheable_carries_its_state_until_one_that_does_is_queued() {
    let (mut server, _client) = pair();
    let sends: Vec<_> = (0..3)
        .map(|_| server.export_cache("cache").unwrap())
        .collect();
    assert!(sends.iter().all(|s| s.luid == 1 && s.with_state));
    assert_eq!(
        sends.iter().map(|s| s.new).collect::<Vec<_>>(),
        [true, false, false]
    );
    assert!(!server.state_queued(1));
    // The first of them to be queued brings the state; the others go as `cached`.
    server.note_state_queued(1);
    assert!(server.state_queued(1));
    assert!(!server.export_cache("cache").unwrap().with_state);
    // Only a Cacheable has a state to queue.
    assert_eq!(server.export("counter").unwrap(), 2);
    server.note_state_queued(2);
    assert!(!server.state_queued(2));
    // A new export of it (its last send taken back) starts again, with a new luid.
    for _ in 0..4 {
        server.unsend(1, true);
    }
    assert!(!server.state_queued(1));
    let fresh = server.export_cache("cache").unwrap();
    assert_eq!((fresh.luid, fresh.with_state, fresh.new), (3, true, true));
}
