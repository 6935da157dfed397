//! Payloads in pieces: an encoder that shares large byte strings hands the broker the bytes
//! before, each string, and the bytes after. They leave uncopied, parked or not, and arrive as
//! one payload.

use super::*;

/// A payload in pieces.
struct Pieces(Vec<Bytes>);

impl Payload for Pieces {
    fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn queue(self, out: &mut Outbox) {
        for piece in self.0 {
            out.append_payload(piece);
        }
    }
}

/// Small pieces around a large one.
fn pieces(big: &Bytes) -> Pieces {
    Pieces(vec![
        Bytes::from_static(b"before"),
        big.clone(),
        Bytes::from_static(b"after"),
    ])
}

fn whole(big: &Bytes) -> Vec<u8> {
    [&b"before"[..], big, b"after"].concat()
}

/// What `side` has to send, as the chunks of one write, and how many of them are `big`
/// itself.
fn transmit(side: &mut Side, big: &Bytes) -> (Bytes, usize) {
    let (mut chunks, mut tail) = (Vec::new(), BytesMut::new());
    side.broker.poll_transmit(&mut chunks, &mut tail);
    chunks.push(tail.freeze());
    let uncopied = chunks.iter().filter(|c| c.as_ptr() == big.as_ptr()).count();
    (Bytes::from(chunks.concat()), uncopied)
}

#[test]
fn calls_and_answers_in_pieces_leave_uncopied_and_arrive_whole() {
    // A window of 256 KiB: four calls of 60 000 bytes fit, the fifth parks.
    let narrow = Limits {
        max_frame_len: 64 * 1024,
        max_call_bytes: 0,
        ..Limits::default()
    };
    let mut w = World::with_limits(Limits::default(), narrow);
    let big = Bytes::from(vec![5u8; 60_000]);
    for id in 1..=5 {
        let started = w.a.broker.start_call(
            0,
            "m",
            pieces(&big),
            &[],
            (Some(id), None, CallExtras::default()),
        );
        assert_eq!(started, Ok(id));
    }
    w.a.calls = 5;
    assert_eq!(w.a.broker.stats().parked_calls, 1);
    let (wire, uncopied) = transmit(&mut w.a, &big);
    assert_eq!(uncopied, 4, "the four calls that left");
    w.b.receive(&wire, 1 << 20);
    assert_eq!(w.b.incoming.len(), 4);
    for call in &w.b.incoming {
        assert_eq!(&call.body[call.args_at..], &whole(&big)[..]);
    }

    // Answers in pieces, with and without references; each makes room for the parked call.
    let answer_big = Bytes::from(vec![6u8; 10_000]);
    for refs in [Vec::new(), vec![Ref::Local(7)]] {
        let call = w.b.incoming.pop_front().unwrap();
        let outcome = Outcome {
            ok: true,
            payload: pieces(&answer_big),
            refs,
        };
        w.b.broker
            .finish_call(call.id, true, Some(Ok(outcome)), (false, call.charge));
        w.b.act();
        let (wire, uncopied) = transmit(&mut w.b, &answer_big);
        assert_eq!(uncopied, 1);
        w.a.receive(&wire, 1 << 20);
        match w.a.take_answer(call.id) {
            Ok(o) => assert_eq!(o.payload, whole(&answer_big)),
            Err(f) => panic!("{f:?}"),
        }
    }
    // The parked call left, uncopied, when the first answer made room.
    let (wire, uncopied) = transmit(&mut w.a, &big);
    assert_eq!(uncopied, 1);
    w.b.receive(&wire, 1 << 20);
    let parked = w.b.incoming.back().unwrap();
    assert_eq!(parked.id, 5);
    assert_eq!(&parked.body[parked.args_at..], &whole(&big)[..]);
}
