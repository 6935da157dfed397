//! Tests on the two-broker harness for each state diagram of the module docs and for the races
//! between the two sides.

use std::cell::Cell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::frame::FrameDecoder;
use crate::handshake::ReceiveLimits;
use crate::message::MessageLimits;

mod harness;
mod pieces;
mod window;

use self::harness::*;

impl World {
    /// a asks b for `object` and holds what the answer carries, everything delivered.
    fn fetch(&mut self, object: Ref) -> Vec<Ref> {
        let id = self.a.call(0, "get", b"", &[]);
        self.settle();
        self.b.answer(b"", vec![object]);
        self.settle();
        ok(self.a.take_answer(id)).refs
    }
}

/// The answer's outcome, or a panic naming the fault.
fn ok(reply: Reply<Ref, Arrived>) -> Outcome<Ref, Arrived> {
    reply.unwrap_or_else(|f| panic!("fault: {f:?}"))
}

#[test]
fn a_call_is_answered_and_its_caller_woken_once() {
    for chunk in [1, 3, usize::MAX] {
        let mut w = World::new();
        w.chunk = chunk;
        let id = w.a.call(0, "echo", b"hi", &[]);
        assert!(w.a.broker.poll_answer(id, |_| {}).is_pending());
        w.settle();
        let call = &w.b.incoming[0];
        assert_eq!(
            (
                call.object.clone().remote_or_local(),
                &call.body[call.method.clone()]
            ),
            (100, &b"echo"[..])
        );
        assert_eq!(&call.body[call.args_at..], b"hi");
        w.b.answer(b"ho", Vec::new());
        w.settle();
        assert_eq!(w.a.answered, [id]);
        assert_eq!(&ok(w.a.take_answer(id)).payload.bytes[..], b"ho");
        assert_eq!(w.a.broker.stats().pending_calls, 0);
        assert_eq!(w.b.broker.stats().in_flight_calls, 0);
    }
}

#[test]
fn pipelined_answers_in_any_order_reach_their_callers() {
    let mut w = World::new();
    let ids: Vec<u64> = (0..5).map(|i| w.a.call(0, "n", &[i], &[])).collect();
    w.settle();
    assert_eq!(w.b.incoming.len(), 5);
    // The callee answers in reverse order, each answer a write of its own.
    let mut calls: Vec<_> = w.b.incoming.drain(..).collect();
    calls.reverse();
    for call in calls {
        let arg = call.body[call.args_at];
        let outcome = Outcome {
            ok: true,
            payload: Bytes::from(vec![arg * 10]),
            refs: Vec::new(),
        };
        w.b.broker
            .finish_call(call.id, true, Some(Ok(outcome)), (false, call.charge));
        w.flush();
    }
    // And the pipe reorders those writes again.
    let mut writes: Vec<_> = w.ba.drain(..).collect();
    writes.swap(0, 3);
    w.ba.extend(writes);
    w.settle();
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(ok(w.a.take_answer(id)).payload.bytes[..], [i as u8 * 10]);
    }
}

#[test]
fn a_cancelled_call_is_never_answered_and_its_handler_hears_of_it() {
    let mut w = World::new();
    let id = w.a.call(0, "slow", b"", &[]);
    w.settle();
    let call = w.b.incoming.pop_front().expect("the call");
    // The handler waits: it is watched.
    w.b.broker.watch(call.id, call.id).expect("open");
    assert!(w.a.broker.cancel_call(id).is_none());
    w.settle();
    assert_eq!(w.b.cancelled, [call.id]);
    // The handler finishes anyway: no answer, only the fault that closes the call's place
    // in the caller's window, which wakes no caller.
    w.b.broker
        .finish_call(call.id, true, Some(Ok(empty())), (true, call.charge));
    let last = w.b.transmit().expect("the closing fault");
    let body = FrameDecoder::new(1 << 20)
        .decode(&mut BytesMut::from(&last[..]))
        .unwrap()
        .unwrap();
    assert!(matches!(
        Message::decode(body, &MessageLimits::default()),
        Ok(Message::Fault {
            kind: FaultKind::Cancelled,
            ..
        })
    ));
    assert_eq!(
        w.a.broker.pending.cancelled(),
        1,
        "kept until the peer's last word"
    );
    w.a.receive(&last, usize::MAX);
    assert!(w.a.answered.is_empty());
    assert_eq!(w.b.broker.in_flight(), 0);
    assert_eq!(
        w.a.broker.pending.cancelled(),
        0,
        "the call's place is closed"
    );
    assert_eq!(w.a.broker.window_used, 0);
    assert_eq!(w.b.broker.stats().call_bytes, 0);
}

fn empty() -> Outcome<Ref> {
    Outcome {
        ok: true,
        payload: Bytes::new(),
        refs: Vec::new(),
    }
}

#[test]
fn a_cancel_crossing_the_answer_loses_nothing_and_releases_its_references() {
    let mut w = World::new();
    w.delay = (5, 5);
    let id = w.a.call(0, "get", b"", &[]);
    w.settle();
    // b answers with a reference to its object 7, and a cancels before the answer arrives:
    // the two cross on the wire.
    w.b.answer(b"", vec![Ref::Local(7)]);
    w.flush();
    assert_eq!(w.b.exported.len(), 1);
    assert!(w.a.broker.cancel_call(id).is_none());
    w.settle();
    // a released the unwanted answer's reference without importing it: b's export ended, and
    // nobody broke the protocol.
    assert_eq!(w.a.made, 0);
    w.settle();
    assert_eq!(w.b.unexported, w.b.exported);
    assert!(w.a.error.is_none() && w.b.error.is_none());
    assert_eq!(w.b.broker.stats().exported, 0);
    assert_eq!(w.a.broker.stats().imported, 0);
}

#[test]
fn a_release_crossing_a_resend_keeps_the_object_alive() {
    let mut w = World::new();
    w.delay = (5, 5);
    let first = w.a.call(0, "get", b"", &[]);
    w.settle();
    w.b.answer(b"", vec![Ref::Local(7)]);
    w.settle();
    let held = ok(w.a.take_answer(first)).refs;
    let export = held[0].remote().id;
    // a asks again, then drops its reference: its release leaves while b's second answer,
    // carrying the same object, is on its way.
    let second = w.a.call(0, "get", b"", &[]);
    w.advance(5);
    w.b.answer(b"", vec![Ref::Local(7)]);
    assert_eq!(
        w.b.resent,
        [export],
        "the second send counts on the same export"
    );
    drop(held);
    w.settle();
    // b counted two sends and one release came back: the object stays exported.
    assert!(w.b.unexported.is_empty(), "freed while the peer holds it");
    let again = ok(w.a.take_answer(second)).refs;
    assert_eq!(again[0].remote().id, export);
    // a's new handle (a new generation) reaches the object.
    let call = w.a.call(export, "ping", b"", &[]);
    w.settle();
    assert_eq!(w.b.incoming[0].object.clone().remote_or_local(), 7);
    w.b.answer(b"", Vec::new());
    w.settle();
    assert!(ok(w.a.take_answer(call)).ok);
    drop(again);
    w.settle();
    assert_eq!(w.b.unexported, [export]);
    assert!(w.a.error.is_none() && w.b.error.is_none());
}

#[test]
fn a_replica_fetched_again_while_updates_flow_gets_every_later_update() {
    let mut w = World::new();
    w.delay = (3, 3);
    let cache = Ref::Local(9);
    let first = w.a.call(0, "cache", b"", &[]);
    w.settle();
    w.b.answer(b"v0", vec![cache.clone()]);
    w.settle();
    let export = w.b.exported[0];
    let replica = ok(w.a.take_answer(first)).refs;
    assert!(w.b.broker.send_update(export, Bytes::from_static(b"u1")));
    w.settle();
    assert_eq!(w.a.updates.len(), 1);
    // a fetches the cache again; b updates it, answers (a second send of the same export)
    // and updates it again, while a drops its old replica: the release crosses the answer.
    let second = w.a.call(0, "cache", b"", &[]);
    w.advance(3);
    assert!(w.b.broker.send_update(export, Bytes::from_static(b"u2")));
    w.b.answer(b"v2", vec![cache.clone()]);
    assert_eq!(
        w.b.resent,
        [export],
        "the driver's catch-up hook follows the re-send"
    );
    assert!(w.b.broker.send_update(export, Bytes::from_static(b"u3")));
    drop(replica);
    w.settle();
    assert!(w.b.broker.send_update(export, Bytes::from_static(b"u4")));
    w.settle();
    let replica = ok(w.a.take_answer(second)).refs;
    let generation = replica[0].remote().generation;
    // Every update sent after the re-send reached the new replica, in order.
    let after: Vec<&[u8]> =
        w.a.updates
            .iter()
            .filter(|(_, g, _)| *g == generation)
            .map(|(_, _, p)| &p[..])
            .collect();
    assert_eq!(after, [&b"u3"[..], b"u4"]);
    // u2 reached a's table after the old handle's release: dropped there, and the state
    // re-sent with the answer covers it.
    let all: Vec<&[u8]> = w.a.updates.iter().map(|(_, _, p)| &p[..]).collect();
    assert_eq!(all, [&b"u1"[..], b"u3", b"u4"]);
    assert_ne!(w.a.updates[0].1, generation, "u1 went to the first replica");
    // b counted two sends and heard of one: the export lives on.
    assert!(w.b.unexported.is_empty());
    assert_eq!(w.b.broker.stats().exported, 1);
    assert!(w.a.error.is_none() && w.b.error.is_none());
}

#[test]
fn a_revoked_reference_releases_nothing_however_late_it_is_dropped() {
    let mut w = World::new();
    let held = w.fetch(Ref::Local(7));
    let export = held[0].remote().id;
    assert!(w.b.broker.revoke_export(export));
    assert_eq!(w.b.dropped, 1, "the revoked export is the driver's to drop");
    assert!(!w.b.broker.revoke_export(export));
    w.settle();
    assert_eq!(w.a.revoked, [export]);
    // The handle dies after the revocation: no release reaches b (it would be a violation).
    drop(held);
    w.settle();
    assert!(w.b.error.is_none());
    assert_eq!(w.b.broker.violations, 0);
    assert_eq!(w.a.broker.stats().imported, 0);
}

#[test]
fn references_returned_home_are_the_owners_own_objects() {
    let mut w = World::new();
    let held = w.fetch(Ref::Local(7));
    // a hands b's object back, with b's root (a reference to b's object 0) and one of a's.
    let root = {
        let (conn, queue) = (w.a.conn, w.a.queue.clone());
        let imp = Rc::new(Imp {
            conn,
            id: 0,
            generation: 0,
            received: Cell::new(0),
            queue,
        });
        Ref::Remote(imp)
    };
    w.a.call(0, "take", b"", &[held[0].clone(), root, Ref::Local(5)]);
    w.settle();
    let call = &w.b.incoming[0];
    let kinds: Vec<_> = call
        .refs
        .iter()
        .map(|r| r.clone().remote_or_local())
        .collect();
    assert_eq!(kinds[..2], [7, 100]);
    assert!(
        matches!(call.refs[2], Ref::Remote(_)),
        "a's own object is a reference here"
    );
    assert_eq!(w.a.exported.len(), 1);
}

#[test]
fn a_disconnect_mid_call_fails_pending_calls_and_ends_every_export() {
    let mut w = World::new();
    let pending = w.a.call(0, "slow", b"", &[Ref::Local(3)]);
    w.settle();
    let call = w.b.incoming.pop_front().expect("the call");
    w.b.broker.watch(call.id, call.id).expect("open");
    let held = call.refs;
    let fault = Fault {
        kind: FaultKind::Disconnected,
        message: "peer gone".into(),
    };
    w.a.broker.close(fault.clone());
    w.a.act();
    w.b.broker.close(Fault::disconnected());
    w.b.act();
    // a's caller is woken and fails with the close's fault; a's export ended.
    assert_eq!(w.a.answered, [pending]);
    assert_eq!(w.a.take_answer(pending).unwrap_err(), fault);
    assert_eq!(w.a.unexported.len(), 1);
    // b's handle of a's object is dead; b's root let go; the handler's watch dropped.
    assert_eq!(w.b.revoked.len(), 1);
    assert_eq!(w.b.dropped, 1);
    assert!(w.b.cancelled.is_empty());
    // Nothing more is taken or sent.
    assert_eq!(w.a.try_call(0, "x", b"", &[]).unwrap_err(), fault);
    assert!(w.b.broker.watch(9, 9).is_err());
    w.b.broker
        .finish_call(call.id, true, Some(Ok(empty())), (true, call.charge));
    drop(held);
    assert!(w.b.transmit().is_none() && w.a.transmit().is_none());
    assert_eq!(w.a.broker.state(), State::Closed);
    w.a.broker.close(Fault::disconnected());
}

#[test]
fn a_draining_side_refuses_new_calls_and_finishes_running_ones() {
    let mut w = World::new();
    let running = w.a.call(0, "slow", b"", &[]);
    w.settle();
    w.b.broker.start_draining(true);
    w.settle();
    // a heard the goodbye: its own new calls fail at once.
    let refused = w.a.try_call(0, "x", b"", &[]).unwrap_err();
    assert_eq!(refused.kind, FaultKind::ShuttingDown);
    // The running call still gets its answer.
    w.b.answer(b"done", Vec::new());
    w.settle();
    assert_eq!(&ok(w.a.take_answer(running)).payload.bytes[..], b"done");
    assert_eq!(w.b.broker.state(), State::Draining);
}

#[test]
fn a_call_reaching_a_draining_side_is_refused_not_lost() {
    let mut w = World::new();
    w.delay = (5, 5);
    let id = w.a.call(0, "x", b"", &[]);
    // The goodbye crosses the call.
    w.b.broker.start_draining(true);
    w.settle();
    assert_eq!(
        w.a.take_answer(id).unwrap_err().kind,
        FaultKind::ShuttingDown
    );
}

#[test]
fn limits_hold_on_both_sides_for_the_call_alone() {
    let small = Limits {
        max_frame_len: 64 * 1024,
        ..Limits::default()
    };
    let mut w = World::with_limits(Limits::default(), small.clone());
    // a's call is over b's frame limit: refused here, naming the peer's limit, nothing sent.
    let big = vec![0u8; 100 * 1024];
    let refused = w.a.try_call(0, "big", &big, &[]).unwrap_err();
    assert_eq!(refused.kind, FaultKind::LimitExceeded);
    assert!(
        refused
            .message
            .contains("the peer's limit max_frame_len = 65536")
    );
    assert!(w.a.transmit().is_none());
    // Too many references for b.
    let refs: Vec<Ref> = (0..ReceiveLimits::FLOOR.max_refs_per_message as u32 + 1)
        .map(|n| Ref::Local(1000 + n))
        .collect();
    let mut w2 = World::with_limits(
        Limits::default(),
        Limits {
            message: crate::message::MessageLimits {
                max_refs_per_message: 16,
                ..Limits::default().message
            },
            ..Limits::default()
        },
    );
    let refused = w2.a.try_call(0, "refs", b"", &refs).unwrap_err();
    assert!(refused.message.contains("max_refs_per_message = 16"));
    assert_eq!(
        w2.a.broker.stats().exported,
        0,
        "a refused call exports nothing"
    );
    // The other way: b's answer to a small-limit caller.
    let mut w3 = World::with_limits(small.clone(), Limits::default());
    let id = w3.a.call(0, "big", b"", &[]);
    w3.settle();
    w3.b.answer(&big, Vec::new());
    w3.settle();
    let fault = w3.a.take_answer(id).unwrap_err();
    assert_eq!(fault.kind, FaultKind::LimitExceeded);
    assert!(
        fault
            .message
            .contains("the caller's limit max_frame_len = 65536")
    );
    // Each connection still works.
    for w in [&mut w, &mut w2, &mut w3] {
        let id = w.a.call(0, "small", b"", &[]);
        w.settle();
        w.b.answer(b"", Vec::new());
        w.settle();
        assert!(ok(w.a.take_answer(id)).ok);
        assert!(w.a.error.is_none() && w.b.error.is_none());
    }
}

#[test]
fn a_larger_limit_announced_later_lets_larger_calls_through() {
    let small = Limits {
        max_frame_len: 64 * 1024,
        ..Limits::default()
    };
    let mut w = World::with_limits(Limits::default(), small);
    let big = vec![0u8; 100 * 1024];
    assert!(w.a.try_call(0, "big", &big, &[]).is_err());
    // b raises its limit (after a login, say): a hears of it in a limits message.
    assert_eq!(w.b.broker.set_max_frame_len(1 << 20), 1 << 20);
    w.b.decoder = FrameDecoder::new(1 << 20);
    w.settle();
    assert_eq!(w.a.broker.peer_limits().max_frame_len, 1 << 20);
    w.a.call(0, "big", &big, &[]);
    w.settle();
    assert_eq!(w.b.incoming.len(), 1);
}

#[test]
fn a_cache_update_over_the_peers_frame_limit_is_not_sent() {
    let small = Limits {
        max_frame_len: 64 * 1024,
        ..Limits::default()
    };
    let mut w = World::with_limits(small, Limits::default());
    let id = w.a.call(0, "cache", b"", &[]);
    w.settle();
    w.b.answer(b"", vec![Ref::Local(9)]);
    w.settle();
    let export = w.b.exported[0];
    // a would refuse the frame and close the connection: b does not send it.
    assert!(
        !w.b.broker
            .send_update(export, Bytes::from(vec![0; 64 * 1024]))
    );
    assert!(w.b.broker.send_update(export, Bytes::from_static(b"small")));
    w.settle();
    assert_eq!(w.a.updates.len(), 1);
    assert!(w.a.error.is_none());
    // Nor to an object no longer exported.
    drop(ok(w.a.take_answer(id)));
    w.settle();
    assert!(!w.b.broker.send_update(export, Bytes::from_static(b"late")));
}

#[test]
fn table_limits_refuse_the_call_and_count_violations() {
    let tight = Limits {
        max_in_flight_calls: 1,
        max_violations: 1,
        ..Limits::default()
    };
    let mut w = World::with_limits(Limits::default(), tight);
    let first = w.a.call(0, "x", b"", &[]);
    let second = w.a.call(0, "x", b"", &[]);
    w.settle();
    // The second call is over b's in-flight limit: refused alone, a violation counted.
    assert_eq!(w.b.incoming.len(), 1);
    let fault = w.a.take_answer(second).unwrap_err();
    assert!(fault.message.contains("max_in_flight_calls = 1"));
    assert!(w.b.error.is_none());
    // A second violation closes the connection.
    w.a.call(0, "x", b"", &[]);
    w.settle();
    assert!(matches!(
        w.b.error,
        Some(ProtocolError::TooManyViolations { count: 2, max: 1 })
    ));
    let _ = first;
}

#[test]
fn with_the_most_violations_allowed_the_count_never_overflows() {
    let most = Limits {
        max_violations: u32::MAX,
        ..Limits::default()
    };
    let mut w = World::with_limits(Limits::default(), most);
    w.b.broker.violations = u32::MAX - 1;
    // Releases of objects never exported, each a violation.
    for _ in 0..3 {
        let mut frame = BytesMut::new();
        let mut body = BytesMut::new();
        crate::message::encode_release(&mut body, &[(42, 1)]);
        crate::frame::encode_frame(&body, &mut frame);
        w.b.receive(&frame, usize::MAX);
    }
    assert!(w.b.error.is_none());
    assert_eq!(w.b.broker.violations, u32::MAX);
}

#[test]
fn protocol_violations_are_errors_not_panics() {
    let mut w = World::new();
    // A call whose id is already running: the connection must close.
    let id = w.a.call(0, "x", b"", &[]);
    w.settle();
    let call = w.b.incoming.pop_front().expect("the call");
    w.b.broker.watch(call.id, call.id).expect("open");
    // a's broker would never reuse an id: forge the frame.
    let mut frame = BytesMut::new();
    crate::message::encode_call_frame_head(
        &mut frame,
        0,
        id,
        0,
        b"x",
        (true, None, &Default::default()),
        &[],
    );
    w.b.receive(&frame, usize::MAX);
    assert!(matches!(w.b.error, Some(ProtocolError::DuplicateRequest(i)) if i == id));
    // Releases of objects never exported count as violations.
    let mut w = World::new();
    let mut frame = BytesMut::new();
    let mut body = BytesMut::new();
    crate::message::encode_release(&mut body, &[(42, 1), (0, 5)]);
    crate::frame::encode_frame(&body, &mut frame);
    w.b.receive(&frame, 1);
    assert!(w.b.error.is_none());
    assert_eq!(w.b.broker.violations, 1);
    // A call to an object never exported is refused, the connection kept.
    let id = w.a.call(77, "x", b"", &[]);
    w.settle();
    assert_eq!(
        w.a.take_answer(id).unwrap_err().kind,
        FaultKind::NoSuchObject
    );
}

#[test]
fn keep_alive_runs_on_the_virtual_clock() {
    use crate::liveness::{Liveness, LivenessConfig, Timeout};
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let config = LivenessConfig {
        keepalive: Some(Duration::from_secs(20)),
        idle: Some(Duration::from_secs(60)),
        hello: None,
    };
    let mut live = Liveness::new(config, start);
    live.handle_hello(start);
    let mut w = World::new();
    // Quiet for 20 s: a pings, b pongs, a hears a frame and stays alive.
    let at = start + Duration::from_secs(20);
    assert_eq!(live.poll_timeout(), at);
    let Some(Timeout::Ping(nonce)) = live.handle_timeout(at) else {
        panic!("a ping is due");
    };
    w.a.broker.send_ping(nonce);
    let ping = w.a.transmit().expect("the ping");
    w.b.receive(&ping, usize::MAX);
    // b answers with a pong of the same nonce.
    let pong = w.b.transmit().expect("the pong");
    let mut input = BytesMut::from(&pong[..]);
    let body = FrameDecoder::new(1 << 20)
        .decode(&mut input)
        .expect("a frame")
        .expect("a whole frame");
    assert_eq!(
        Message::decode(body, &Limits::default().message).expect("a message"),
        Message::Pong { nonce }
    );
    w.a.receive(&pong, usize::MAX);
    assert!(w.a.error.is_none());
    live.handle_frame(at + Duration::from_millis(2));
    assert!(live.poll_timeout() > at + Duration::from_secs(19));
    // Silent for the idle timeout: it gives up.
    let late = at + Duration::from_secs(61);
    let mut timeout = None;
    let mut now = at;
    while now <= late {
        now = live.poll_timeout().max(now + Duration::from_millis(1));
        if let Some(Timeout::Idle(after)) = live.handle_timeout(now) {
            timeout = Some(after);
            break;
        }
    }
    assert_eq!(timeout, Some(Duration::from_secs(60)));
}

/// A frame holding an answer to call `id` that carries `n` fresh references of the sender's.
fn forged_answer(id: u64, first: u64, n: u64) -> BytesMut {
    let refs: Vec<RefDesc> = (first..first + n).map(RefDesc::Sender).collect();
    let mut body = BytesMut::new();
    Message::Answer {
        id,
        ok: true,
        refs,
        payload: Bytes::new(),
    }
    .encode(&mut body);
    let mut frame = BytesMut::new();
    crate::frame::encode_frame(&body, &mut frame);
    frame
}

#[test]
fn an_answer_to_a_call_never_made_imports_nothing_and_is_a_violation() {
    let mut w = World::new();
    // An answer to a call a never made, with 1 000 fresh references: a peer that sends these
    // without reading must not make us hold them.
    w.a.receive(&forged_answer(7, 1, 1000), usize::MAX);
    assert_eq!(w.a.made, 0, "no handle made for an answer nobody asked for");
    assert_eq!(w.a.broker.stats().imported, 0);
    assert_eq!(w.a.broker.violations, 1);
    assert!(w.a.transmit().is_none(), "and no release owed for them");
    // Without references, too, and a fault likewise.
    w.a.receive(&forged_answer(8, 1, 0), usize::MAX);
    assert_eq!(w.a.broker.violations, 2);
    let mut body = BytesMut::new();
    Message::Fault {
        id: 9,
        kind: FaultKind::Internal,
        message: "x".into(),
    }
    .encode(&mut body);
    let mut frame = BytesMut::new();
    crate::frame::encode_frame(&body, &mut frame);
    w.a.receive(&frame, 1);
    assert_eq!(w.a.broker.violations, 3);
    assert!(w.a.error.is_none(), "three tolerated");
}

#[test]
fn an_answer_to_a_cancelled_call_releases_its_references_without_importing_them() {
    let mut w = World::new();
    let id = w.a.call(0, "slow", b"", &[]);
    assert!(w.a.broker.cancel_call(id).is_none());
    w.a.receive(&forged_answer(id, 1, 100), usize::MAX);
    assert_eq!(w.a.made, 0);
    assert_eq!(
        w.a.broker.violations, 0,
        "an answer crossing a cancel is no violation"
    );
    // Each reference's send is released at once, in one message.
    let write = w.a.transmit().expect("releases");
    let mut input = BytesMut::from(&write[..]);
    let decoder = FrameDecoder::new(1 << 20);
    let mut released = Vec::new();
    while let Some(body) = decoder.decode(&mut input).expect("frames") {
        if let Message::Release(items) =
            Message::decode(body, &Limits::default().message).expect("a message")
        {
            released.extend(items);
        }
    }
    assert_eq!(released, (1..101).map(|id| (id, 1)).collect::<Vec<_>>());
}

#[test]
fn references_over_max_imports_are_refused_before_they_are_imported() {
    let tight = Limits {
        max_imports: 10,
        ..Limits::default()
    };
    let mut w = World::with_limits(tight, Limits::default());
    let id = w.a.call(0, "many", b"", &[]);
    w.a.receive(&forged_answer(id, 1, 11), usize::MAX);
    assert_eq!(w.a.made, 0, "refused before any handle was made");
    let fault = w.a.take_answer(id).unwrap_err();
    assert!(fault.message.contains("max_imports = 10"), "{fault:?}");
    assert_eq!(w.a.broker.violations, 1);
    assert_eq!(w.a.broker.stats().imported, 0);
    // Released, so the owner's counts stay right.
    assert!(w.a.transmit().is_some());
    // Within the limit they are imported.
    let id = w.a.call(0, "few", b"", &[]);
    w.a.receive(&forged_answer(id, 20, 10), usize::MAX);
    assert_eq!(w.a.made, 10);
    assert_eq!(ok(w.a.take_answer(id)).refs.len(), 10);
}
