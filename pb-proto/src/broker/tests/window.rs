//! The call window: a sender keeps its calls in flight within what the receiver announced,
//! parking the rest; the receiver counts what it holds and runs, credits calls that get no
//! answer, closes a cancelled call's place with a fault, and refuses what a sender that
//! ignores the window sends beyond it.

use super::*;
use crate::handshake::MIN_CALL_WINDOW;

/// Limits with the smallest window there is: 64 KiB frames, a 256 KiB window.
fn narrow() -> Limits {
    Limits {
        max_frame_len: 64 * 1024,
        max_call_bytes: 0,
        ..Limits::default()
    }
}

/// A payload of which four calls fit in [`narrow`]'s window, and five do not.
const ARGS: usize = 60_000;

fn decode_all(mut wire: BytesMut) -> Vec<Message> {
    let decoder = FrameDecoder::new(1 << 20);
    let mut out = Vec::new();
    while let Some(body) = decoder.decode(&mut wire).unwrap() {
        out.push(Message::decode(body, &MessageLimits::default()).unwrap());
    }
    out
}

/// The start of each message, for an assertion's message (payloads can be large).
fn heads(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| format!("{m:?}").chars().take(60).collect())
        .collect()
}

/// A call frame body as a sender that ignores windows would write it.
fn raw_call(id: u64, answer: bool, args: usize) -> Bytes {
    raw_call_sending(id, answer, args, &[])
}

/// As [`raw_call`], sending the references `refs`.
fn raw_call_sending(id: u64, answer: bool, args: usize, refs: &[RefDesc]) -> Bytes {
    let mut frame = BytesMut::new();
    let flags = (answer, None, &CallExtras::default());
    encode_call_frame_head(&mut frame, args, id, 0, b"m", flags, refs);
    frame.extend_from_slice(&vec![7; args]);
    FrameDecoder::new(1 << 20)
        .decode(&mut frame)
        .unwrap()
        .unwrap()
}

#[test]
fn calls_beyond_the_peers_window_wait_and_leave_as_answers_come_back() {
    let mut w = World::with_limits(Limits::default(), narrow());
    assert_eq!(
        w.a.broker.peer_limits().max_call_bytes,
        Some(MIN_CALL_WINDOW)
    );
    let ids: Vec<u64> = (0..6).map(|_| w.a.call(0, "m", &[1; ARGS], &[])).collect();
    w.settle();
    assert_eq!(w.b.incoming.len(), 4, "four fit in the window");
    assert_eq!(w.a.broker.stats().parked_calls, 2);
    let held = w.b.broker.stats().call_bytes;
    assert!(held > 4 * ARGS && held <= MIN_CALL_WINDOW, "{held}");
    // Each answer makes room for one more.
    w.b.answer(b"1", Vec::new());
    w.settle();
    assert_eq!(
        (w.b.incoming.len(), w.a.broker.stats().parked_calls),
        (4, 1)
    );
    while !w.b.incoming.is_empty() {
        w.b.answer(b"2", Vec::new());
        w.settle();
    }
    assert_eq!(w.a.answered, ids, "every call answered, in order");
    assert_eq!(w.a.broker.stats().parked_calls, 0);
    assert_eq!(w.b.broker.stats().call_bytes, 0);
    assert!(w.b.error.is_none() && w.a.error.is_none());
    assert_eq!(
        w.b.broker.violations, 0,
        "a well-behaved sender is never refused"
    );
}

#[test]
fn calls_without_answers_are_credited() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..6 {
        w.a.broker
            .start_call(
                0,
                "m",
                Bytes::from(vec![1; ARGS]),
                &[],
                (None, None, CallExtras::default()),
            )
            .unwrap();
    }
    w.settle();
    assert_eq!(w.b.incoming.len(), 4);
    assert_eq!(w.a.broker.stats().parked_calls, 2);
    // The one-way calls end: a credit (one, for the batch) makes room for the rest.
    while let Some(call) = w.b.incoming.pop_front() {
        w.b.broker
            .finish_call(call.id, false, None::<Reply<_>>, (false, call.charge));
    }
    let wire = w.b.transmit().expect("a credit");
    let credited = decode_all(BytesMut::from(&wire[..]));
    assert!(
        matches!(credited[..], [Message::Credit { bytes }] if bytes as usize > 4 * ARGS),
        "{credited:?}"
    );
    w.a.receive(&wire, usize::MAX);
    w.settle();
    assert_eq!(w.b.incoming.len(), 2);
    assert_eq!(w.a.broker.stats().parked_calls, 0);
}

#[test]
fn a_release_never_overtakes_a_parked_call() {
    let mut w = World::with_limits(Limits::default(), narrow());
    // b hands a its object 7.
    let first = w.a.call(0, "give", b"", &[]);
    w.settle();
    w.b.answer(b"", vec![Ref::Local(7)]);
    w.settle();
    let mut given = ok(w.a.take_answer(first));
    let seven = given.refs.pop().expect("the reference");
    // The window fills; a call that sends 7 back is parked, and a drops its handle.
    for _ in 0..5 {
        w.a.call(0, "fill", &[1; ARGS], &[]);
    }
    let back = w.a.call(0, "back", b"", std::slice::from_ref(&seven));
    drop(seven);
    drop(given);
    w.settle();
    assert_eq!(w.a.broker.stats().parked_calls, 2);
    assert!(
        w.b.unexported.is_empty(),
        "the release waits behind the call"
    );
    while w.b.incoming.front().is_some_and(|c| c.id != back) {
        w.b.answer(b"", Vec::new());
        w.settle();
    }
    let call = w.b.incoming.pop_front().expect("the parked call, sent");
    assert_eq!(call.id, back);
    assert!(
        matches!(call.refs[..], [Ref::Local(7)]),
        "the object is still there for it"
    );
    w.b.broker
        .finish_call(call.id, true, Some(Ok(empty())), (false, call.charge));
    drop(call);
    w.settle();
    assert_eq!(w.b.unexported, [1], "released, after the call");
}

#[test]
fn a_cancelled_call_leaves_the_window_with_the_peers_last_word() {
    let mut w = World::with_limits(Limits::default(), narrow());
    let ids: Vec<u64> = (0..5).map(|_| w.a.call(0, "m", &[1; ARGS], &[])).collect();
    w.settle();
    assert_eq!(w.a.broker.stats().parked_calls, 1);
    // The parked call is cancelled: it just goes, and nothing is sent for it.
    assert!(w.a.broker.cancel_call(ids[4]).is_none());
    assert_eq!(w.a.broker.stats().parked_calls, 0);
    assert!(w.a.transmit().is_none());
    let parked = w.a.call(0, "m", &[1; ARGS], &[]);
    assert_eq!(w.a.broker.stats().parked_calls, 1);
    // A call the peer runs is cancelled: it stays counted until the peer's fault.
    let running = w.b.incoming.pop_front().expect("a call");
    w.b.broker.watch(running.id, running.id).unwrap();
    assert!(w.a.broker.cancel_call(running.id).is_none());
    w.settle();
    assert_eq!(w.b.cancelled, [running.id]);
    assert_eq!(
        w.a.broker.stats().parked_calls,
        1,
        "not freed by the cancel"
    );
    w.b.broker
        .finish_call(running.id, true, None::<Reply<_>>, (true, running.charge));
    w.settle();
    assert_eq!(w.a.broker.stats().parked_calls, 0, "freed by the fault");
    assert!(w.b.incoming.iter().any(|c| c.id == parked));
    assert!(w.a.answered.is_empty(), "no caller woken by the fault");
    // An answer crossing a cancel is the last word as well.
    let crossing = w.b.incoming.pop_front().expect("a call");
    w.b.broker.finish_call(
        crossing.id,
        true,
        Some(Ok(empty())),
        (false, crossing.charge),
    );
    assert!(w.a.broker.cancel_call(crossing.id).is_none());
    w.settle();
    let used = w.a.broker.window_used;
    let still: usize = w.b.incoming.iter().map(|c| c.charge).sum();
    assert_eq!(used, still, "the window counts exactly what the peer holds");
}

#[test]
fn a_sender_that_ignores_the_window_is_refused_beyond_it() {
    let mut b = Side::new(2, narrow(), Some(Ref::Local(100)));
    b.broker.set_peer_limits(Some(Limits::default().receive()));
    // Held back frames count as soon as they are held: the fifth does not fit.
    let calls: Vec<Bytes> = (1..=5).map(|id| raw_call(id, true, ARGS)).collect();
    for call in &calls[..4] {
        assert_eq!(b.broker.hold_frame(&call.clone().into()), Ok(true));
    }
    assert_eq!(
        b.broker.hold_frame(&calls[4].clone().into()),
        Ok(false),
        "refused, not held"
    );
    assert_eq!(b.broker.violations, 1);
    let refused = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
    assert!(matches!(
        &refused[..],
        [Message::Fault { id: 5, kind: FaultKind::LimitExceeded, message }]
            if message.contains("max_call_bytes = 262144")
    ));
    // Frames that are not calls are held without counting.
    let mut ping = BytesMut::new();
    Message::Ping { nonce: 1 }.encode(&mut ping);
    assert_eq!(b.broker.hold_frame(&ping.freeze().into()), Ok(true));
    // The held calls run, counted once.
    let mut make = |_, _| unreachable!("no references");
    let mut charges = 0;
    for call in calls[..4].iter().cloned() {
        let call = b
            .broker
            .handle_held_frame(call, &mut make)
            .unwrap()
            .unwrap();
        charges += call.charge;
        b.incoming.push_back(call);
    }
    assert_eq!(b.broker.stats().call_bytes, charges);
    // Beyond the window while they run: a one-way call is refused too, and credited.
    let oneway = raw_call(6, false, ARGS);
    let mut make = |_, _| unreachable!("no references");
    assert!(
        b.broker
            .handle_frame(oneway.clone(), &mut make)
            .unwrap()
            .is_none()
    );
    let credited = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
    assert_eq!(
        credited,
        [Message::Credit {
            bytes: oneway.len() as u64
        }]
    );
    // Past max_violations (3), the connection is closed.
    assert!(
        b.broker
            .handle_frame(raw_call(7, true, ARGS), &mut make)
            .is_ok()
    );
    assert!(matches!(
        b.broker.handle_frame(raw_call(8, true, ARGS), &mut make),
        Err(ProtocolError::TooManyViolations { count: 4, max: 3 })
    ));
    // Answered, the calls leave the window.
    while let Some(call) = b.incoming.pop_front() {
        b.broker
            .finish_call(call.id, true, Some(Ok(empty())), (false, call.charge));
    }
    assert_eq!(b.broker.stats().call_bytes, 0);
}

#[test]
fn a_call_refused_beyond_the_window_releases_the_references_it_carries() {
    // Read at once, or held back by a congested driver: refused either way.
    for held in [false, true] {
        let mut b = Side::new(2, narrow(), Some(Ref::Local(100)));
        b.broker.set_peer_limits(Some(Limits::default().receive()));
        let mut make = |_, _| unreachable!("no references");
        for id in 1..=4 {
            let call = raw_call(id, true, ARGS);
            assert!(b.broker.handle_frame(call, &mut make).unwrap().is_some());
        }
        // The fifth does not fit; it sends the peer's objects 5 and 6 (counted as sent there)
        // and returns our root.
        let refs = [RefDesc::Sender(5), RefDesc::Sender(6), RefDesc::Receiver(0)];
        let over = raw_call_sending(5, true, ARGS, &refs);
        if held {
            assert_eq!(b.broker.hold_frame(&over.into()), Ok(false));
        } else {
            assert!(b.broker.handle_frame(over, &mut make).unwrap().is_none());
        }
        assert_eq!(b.broker.stats().imported, 0, "nothing imported");
        let out = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
        assert!(
            matches!(&out[..], [Message::Fault { id: 5, kind: FaultKind::LimitExceeded, .. }, Message::Release(items)] if items[..] == [(5, 1), (6, 1)]),
            "held {held}: {out:?}"
        );
    }
}

#[test]
fn a_closed_broker_holds_frames_without_counting_or_refusing_them() {
    let mut b = Side::new(2, narrow(), Some(Ref::Local(100)));
    b.broker.set_peer_limits(Some(Limits::default().receive()));
    b.broker.close(Fault::disconnected());
    let _ = b.transmit();
    // Five calls, one more than the window takes: all held (to be dropped), none counted, none
    // refused with a fault or a violation.
    for id in 1..=5 {
        assert_eq!(
            b.broker.hold_frame(&raw_call(id, true, ARGS).into()),
            Ok(true)
        );
    }
    assert_eq!(b.broker.violations, 0);
    assert_eq!(b.broker.stats().call_bytes, 0);
    assert_eq!(b.transmit(), None, "no fault sent");
}

#[test]
fn a_peer_without_a_window_gets_no_credits_and_nothing_is_parked() {
    let old = ReceiveLimits {
        max_call_bytes: None,
        ..narrow().receive()
    };
    let mut a = Side::new(1, Limits::default(), None);
    let mut b = Side::new(2, narrow(), Some(Ref::Local(100)));
    a.broker.set_peer_limits(Some(old));
    b.broker.set_peer_limits(Some(ReceiveLimits {
        max_call_bytes: None,
        ..Limits::default().receive()
    }));
    // a sends what b's window would not take: nothing is parked (b counts nothing, as far as
    // a knows), and b, which does count, refuses the fifth.
    for _ in 0..5 {
        a.call(0, "m", &[1; ARGS], &[]);
    }
    assert_eq!(a.broker.stats().parked_calls, 0);
    b.receive(&a.transmit().unwrap(), usize::MAX);
    assert_eq!(b.incoming.len(), 4);
    // One-way calls that end send no credit to a peer that would not understand it.
    let call = b.incoming.pop_front().unwrap();
    b.broker
        .finish_call(call.id, false, None::<Reply<_>>, (false, call.charge));
    let out = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
    assert!(
        out.iter().all(|m| !matches!(m, Message::Credit { .. })),
        "{out:?}"
    );
    // Nor our window in a limits message.
    b.broker.set_max_call_bytes(1 << 30);
    let told = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
    assert!(matches!(
        told[..],
        [Message::Limits(ReceiveLimits {
            max_call_bytes: None,
            ..
        })]
    ));
}

#[test]
fn a_window_that_grows_lets_parked_calls_leave() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..6 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    w.settle();
    assert_eq!(w.a.broker.stats().parked_calls, 2);
    // After a login, say.
    assert_eq!(w.b.broker.set_max_call_bytes(1 << 20), 1 << 20);
    w.settle();
    assert_eq!(w.a.broker.peer_limits().max_call_bytes, Some(1 << 20));
    assert_eq!(w.a.broker.stats().parked_calls, 0);
    assert_eq!(w.b.incoming.len(), 6);
    // The connection's end drops what is parked; its callers fail.
    for _ in 0..20 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    assert!(w.a.broker.stats().parked_calls > 0);
    w.a.broker.close(Fault::disconnected());
    assert_eq!(w.a.broker.stats().parked_calls, 0);
}

#[test]
fn a_call_cancelled_before_the_peers_hello_stays_counted_until_its_last_word() {
    // A dialer's calls leave before the peer's hello, held to the floor's window.
    let (mut a, mut b) = (
        Side::new(1, Limits::default(), None),
        Side::new(2, Limits::default(), Some(Ref::Local(100))),
    );
    let id = a.call(0, "m", b"x", &[]);
    assert!(a.broker.cancel_call(id).is_none());
    assert_eq!(
        a.broker.pending.cancelled(),
        1,
        "the peer may be counting it"
    );
    let used = a.broker.window_used;
    assert!(used > 0);
    // The peer's hello carries a window: the call stays counted until the peer's word.
    a.broker.set_peer_limits(Some(Limits::default().receive()));
    b.broker.set_peer_limits(Some(Limits::default().receive()));
    b.receive(&a.transmit().unwrap(), usize::MAX);
    // The cancel reached b with the call, before its handler waited: it is answered, and
    // the answer is the last word.
    let call = b.incoming.pop_front().expect("the call");
    b.broker
        .finish_call(call.id, true, Some(Ok(empty())), (false, call.charge));
    assert_eq!(a.broker.window_used, used);
    a.receive(&b.transmit().unwrap(), usize::MAX);
    assert_eq!((a.broker.pending.cancelled(), a.broker.window_used), (0, 0));
    // A peer without a window sends no such word: nothing is kept for it.
    let mut c = Side::new(3, Limits::default(), None);
    let id = c.call(0, "m", b"x", &[]);
    assert!(c.broker.cancel_call(id).is_none());
    assert_eq!(c.broker.pending.cancelled(), 1);
    c.broker.set_peer_limits(Some(ReceiveLimits {
        max_call_bytes: None,
        ..Limits::default().receive()
    }));
    assert_eq!((c.broker.pending.cancelled(), c.broker.window_used), (0, 0));
}

#[test]
fn an_update_follows_the_parked_call_that_first_sends_its_object() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..4 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    // The fifth call parks; it is the first send of a's object 7 (a cache, say), which then
    // changes: the broker takes the update.
    w.a.call(0, "m", &[1; ARGS], &[Ref::Local(7)]);
    assert_eq!(w.a.broker.stats().parked_calls, 1);
    let export = *w.a.exported.last().expect("7 exported");
    assert!(w.a.broker.send_update(export, Bytes::from_static(b"v2")));
    w.settle();
    assert!(w.b.updates.is_empty(), "the update waits behind the call");
    // An answer makes room: the call leaves, then the update, which reaches b's handle.
    w.b.answer(b"1", Vec::new());
    w.settle();
    assert_eq!(w.a.broker.stats().parked_calls, 0);
    assert_eq!(w.b.broker.stats().imported, 1, "b holds a's object");
    assert_eq!(w.b.updates.len(), 1, "the update was not lost");
    assert_eq!(
        (w.b.updates[0].0, &w.b.updates[0].2[..]),
        (export, &b"v2"[..])
    );
    // Once no parked call sends it, an update goes at once.
    assert!(w.a.broker.send_update(export, Bytes::from_static(b"v3")));
    w.settle();
    assert_eq!(w.b.updates.len(), 2);
}

#[test]
fn a_revocation_follows_the_parked_call_that_sends_its_object() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..4 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    w.a.call(0, "m", &[1; ARGS], &[Ref::Local(7)]);
    let export = *w.a.exported.last().expect("7 exported");
    assert!(w.a.broker.revoke_export(export));
    w.settle();
    w.b.answer(b"1", Vec::new());
    w.settle();
    assert_eq!(w.a.broker.stats().parked_calls, 0);
    // b got the reference from the call, then heard it is revoked: it holds nothing live.
    assert_eq!(w.b.revoked, [export]);
    while !w.b.incoming.is_empty() {
        w.b.answer(b"1", Vec::new());
    }
    w.settle();
    assert_eq!(w.b.broker.stats().imported, 0);
    assert!(w.b.error.is_none() && w.a.error.is_none());
}

#[test]
fn what_follows_a_parked_call_cancelled_follows_the_call_before_it() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..4 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    // Object 7 goes in a call that parks, and in one behind it, which is cancelled after an
    // update queued behind it.
    let first = w.a.call(0, "m", &[1; ARGS], &[Ref::Local(7)]);
    let second = w.a.call(0, "m", &[1; 10], &[Ref::Local(7)]);
    let export = *w.a.exported.last().expect("7 exported");
    assert!(w.a.broker.send_update(export, Bytes::from_static(b"v2")));
    assert!(w.a.broker.cancel_call(second).is_none());
    w.a.act();
    w.settle();
    assert!(w.b.updates.is_empty(), "the update still waits");
    // An answer makes room: the first call leaves, then the update.
    w.b.answer(b"1", Vec::new());
    let room = w.b.transmit().expect("the answer");
    w.a.receive(&room, usize::MAX);
    let wire = w.a.transmit().expect("the call");
    let out = decode_all(BytesMut::from(&wire[..]));
    assert!(
        matches!(&out[..], [Message::Call { id, .. }, Message::Update { object, .. }] if *id == first && *object == export),
        "{:?}",
        heads(&out)
    );
    w.b.receive(&wire, usize::MAX);
    assert_eq!(w.b.updates.len(), 1, "the update reached b's handle");
    assert!(w.b.error.is_none() && w.a.error.is_none());
}

#[test]
fn what_follows_a_parked_call_cancelled_with_none_before_it_goes_at_once() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..4 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    let parked = w.a.call(0, "m", &[1; ARGS], &[Ref::Local(7)]);
    let export = *w.a.exported.last().expect("7 exported");
    assert!(w.a.broker.revoke_export(export));
    w.settle();
    assert!(w.a.broker.cancel_call(parked).is_none());
    let out = decode_all(BytesMut::from(&w.a.transmit().expect("the revocation")[..]));
    assert!(
        matches!(&out[..], [Message::Revoked { object }] if *object == export),
        "{:?}",
        heads(&out)
    );
}

#[test]
fn a_parked_call_cancelled_before_it_leaves_gives_back_the_objects_it_would_send() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..4 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    // Objects 7 and 8 go in a call that parks (exported as 1 and 2), 7 again in one behind it.
    let parked =
        w.a.call(0, "m", &[1; ARGS], &[Ref::Local(7), Ref::Local(8)]);
    w.a.call(0, "m", &[1; 10], &[Ref::Local(7)]);
    assert_eq!(w.a.broker.stats().parked_calls, 2);
    assert_eq!(w.a.exported, [1, 2]);
    assert!(w.a.broker.cancel_call(parked).is_none());
    w.a.act();
    // 8 went only in the cancelled call: no longer exported; 7 stays, for the call behind.
    assert_eq!(w.a.unexported, [2]);
    assert_eq!(w.a.broker.stats().exported, 1);
    // That call leaves once an answer makes room, and the peer holds 7 from it.
    w.settle();
    w.b.answer(b"1", Vec::new());
    w.settle();
    assert_eq!(w.a.broker.stats().parked_calls, 0);
    let last =
        w.b.incoming
            .back()
            .expect("the call behind the cancelled one");
    assert_eq!(last.refs.len(), 1);
    assert!(w.b.error.is_none() && w.a.error.is_none());
}

#[test]
fn a_parked_call_s_time_left_is_written_again_in_the_same_bytes() {
    use super::super::calls::{TimeLeft, with_time_left};
    use crate::message::{cancelled_id, put_varint, varint_len};
    use std::time::{Duration, Instant};
    // A varint read back as a cancel's id (a tag, then the varint).
    let read = |field: &[u8]| {
        let mut cancel = BytesMut::new();
        Message::Cancel { id: 0 }.encode(&mut cancel);
        cancel.truncate(1);
        cancel.extend_from_slice(field);
        cancelled_id(&cancel)
    };
    let at = Instant::now();
    for (sent, left) in [
        (0u64, 0u64),
        (127, 5),
        (128, 0),
        (10_000, 4_000),
        (10_000, 10_000),
        (1 << 35, (1 << 35) - 1),
        (u64::MAX / 2, u64::MAX / 2 - 5_000),
        (u64::MAX, u64::MAX),
    ] {
        let len = varint_len(sent);
        let mut head = BytesMut::from(&b"head"[..]);
        put_varint(&mut head, sent);
        head.extend_from_slice(b"rest");
        assert_eq!(head.len(), 4 + len + 4);
        let parked = TimeLeft {
            at,
            ms: sent,
            field: 4..4 + len,
        };
        let now = at + Duration::from_millis(sent - left);
        let patched = with_time_left(&head.freeze(), &parked, now);
        assert_eq!(patched.len(), 4 + len + 4, "the frame keeps its length");
        assert_eq!(&patched[..4], b"head");
        assert_eq!(&patched[4 + len..], b"rest");
        assert_eq!(
            read(&patched[4..4 + len]),
            Some(left),
            "sent {sent}, {left} left"
        );
    }
    // A deadline already passed leaves 0, and part of a millisecond counts as one.
    let head = Bytes::from_static(&[0x90, 0x4e]);
    let parked = TimeLeft {
        at,
        ms: 10_000,
        field: 0..2,
    };
    let patched = with_time_left(&head, &parked, at + Duration::from_secs(11));
    assert_eq!(&patched[..], &[0x80, 0x00]);
    let patched = with_time_left(&head, &parked, at + Duration::from_micros(9_998_500));
    assert_eq!(read(&patched), Some(2));
    // A clock that stepped back since the call parked leaves the time it was sent with.
    for back in [Duration::from_millis(1), Duration::from_secs(10)] {
        if let Some(earlier) = at.checked_sub(back) {
            let patched = with_time_left(&head, &parked, earlier);
            assert_eq!(read(&patched), Some(10_000), "{back:?} back");
        }
    }
}

#[test]
fn a_call_that_waits_parked_leaves_with_the_time_its_caller_has_left() {
    let mut w = World::with_limits(Limits::default(), narrow());
    for _ in 0..4 {
        w.a.call(0, "m", &[1; ARGS], &[]);
    }
    // A call with 10 s to go parks behind them; 6 s later an answer makes room.
    let id =
        w.a.broker
            .start_call(
                0,
                "m",
                Bytes::from(vec![1; ARGS]),
                &[],
                (Some(5), Some(10_000), CallExtras::default()),
            )
            .unwrap();
    assert_eq!(w.a.broker.stats().parked_calls, 1);
    w.settle();
    harness::advance(std::time::Duration::from_secs(6));
    w.b.answer(b"1", Vec::new());
    w.settle();
    let parked = w.b.incoming.back().expect("the parked call left");
    assert_eq!(parked.id, id);
    assert_eq!(parked.deadline_ms, Some(4_000));
}

#[test]
fn a_parked_call_never_leaves_with_more_time_than_its_caller_gave_it() {
    for sent in [1u64, 100, 200, 10_000] {
        let mut w = World::with_limits(Limits::default(), narrow());
        for _ in 0..4 {
            w.a.call(0, "m", &[1; ARGS], &[]);
        }
        let id =
            w.a.broker
                .start_call(
                    0,
                    "m",
                    Bytes::from(vec![1; ARGS]),
                    &[],
                    (Some(5), Some(sent), CallExtras::default()),
                )
                .unwrap();
        assert_eq!(w.a.broker.stats().parked_calls, 1);
        w.settle();
        // The driver's clock steps back 10 s while the call is parked.
        harness::rewind(std::time::Duration::from_secs(10));
        w.b.answer(b"1", Vec::new());
        w.settle();
        harness::advance(std::time::Duration::from_secs(10));
        let parked = w.b.incoming.back().expect("the parked call left");
        assert_eq!(parked.id, id);
        assert_eq!(parked.deadline_ms, Some(sent), "sent with {sent} ms");
    }
}

#[test]
fn a_held_call_cancelled_never_runs_and_leaves_the_window_with_its_last_word() {
    let mut b = Side::new(2, narrow(), Some(Ref::Local(100)));
    b.broker.set_peer_limits(Some(Limits::default().receive()));
    let (wanted, oneway) = (raw_call(1, true, ARGS), raw_call(2, false, ARGS));
    for call in [&wanted, &oneway] {
        assert_eq!(b.broker.hold_frame(&call.clone().into()), Ok(true));
    }
    assert!(b.broker.stats().call_bytes >= 2 * ARGS);
    for call in [wanted, oneway] {
        b.broker.drop_held_call(&call.into()).unwrap();
    }
    assert_eq!(b.broker.stats().call_bytes, 0, "both left the window");
    assert_eq!(b.broker.stats().in_flight_calls, 0, "neither ran");
    // The call that wanted an answer gets its last word; the one-way call is credited.
    let out = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
    assert!(
        matches!(&out[..], [Message::Fault { id: 1, kind: FaultKind::Cancelled, .. }, Message::Credit { bytes }] if *bytes as usize >= ARGS),
        "{out:?}"
    );
    assert_eq!(b.broker.violations, 0);
}

#[test]
fn a_draining_side_refuses_its_held_calls_and_is_drained_once_none_is_held() {
    let mut b = Side::new(2, narrow(), Some(Ref::Local(100)));
    b.broker.set_peer_limits(Some(Limits::default().receive()));
    let (refused, cancelled) = (raw_call(1, true, ARGS), raw_call(2, true, ARGS));
    for call in [&refused, &cancelled] {
        assert_eq!(b.broker.hold_frame(&call.clone().into()), Ok(true));
    }
    b.broker.start_draining(true);
    assert_eq!(b.broker.held(), 2);
    assert!(
        !b.broker.is_drained(),
        "nothing runs, but two calls are held"
    );
    b.broker.drop_held_call(&cancelled.into()).unwrap();
    assert!(!b.broker.is_drained());
    let ran = b
        .broker
        .handle_held_frame(refused, &mut |_, _| unreachable!("no references"))
        .unwrap();
    assert!(ran.is_none(), "a draining side runs no held call");
    assert!(b.broker.is_drained());
    assert_eq!(b.broker.stats().call_bytes, 0);
    let out = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
    assert!(
        matches!(
            &out[..],
            [
                Message::Goodbye,
                Message::Fault {
                    id: 2,
                    kind: FaultKind::Cancelled,
                    ..
                },
                Message::Fault {
                    id: 1,
                    kind: FaultKind::ShuttingDown,
                    ..
                },
            ]
        ),
        "{out:?}"
    );
}

#[test]
fn a_held_call_that_sends_objects_gives_them_back_when_cancelled() {
    let mut b = Side::new(2, narrow(), Some(Ref::Local(100)));
    b.broker.set_peer_limits(Some(Limits::default().receive()));
    // A call from the peer that sends two of its objects (ids 7 and 8).
    let mut frame = BytesMut::new();
    let flags = (true, None, &CallExtras::default());
    let refs = [RefDesc::Sender(7), RefDesc::Sender(8)];
    encode_call_frame_head(&mut frame, 0, 1, 0, b"m", flags, &refs);
    let call = FrameDecoder::new(1 << 20)
        .decode(&mut frame)
        .unwrap()
        .unwrap();
    assert_eq!(b.broker.hold_frame(&call.clone().into()), Ok(true));
    b.broker.drop_held_call(&call.into()).unwrap();
    // Both go back to the peer in a release, and nothing is left held.
    let out = decode_all(BytesMut::from(&b.transmit().unwrap()[..]));
    assert!(
        out.iter()
            .any(|m| matches!(m, Message::Release(items) if items.len() == 2)),
        "{out:?}"
    );
    assert_eq!(b.broker.stats().call_bytes, 0);
    // Once closed, there is nothing to give back.
    b.broker.close(Fault::disconnected());
    let again = raw_call(2, true, 10);
    assert_eq!(b.broker.drop_held_call(&again.into()), Ok(()));
    assert!(b.transmit().is_none());
}
