//! Payloads in pieces: an encoder that shares large byte strings hands the broker the bytes
//! before, each string, and the bytes after. They leave uncopied, parked or not, and arrive as
//! one payload.

use super::*;
use crate::frame::Frame;

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
    for _ in 0..5 {
        w.a.try_call_with(0, "m", pieces(&big), &[]).unwrap();
    }
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
        let id = w.b.answer_with(pieces(&answer_big), refs);
        let (wire, uncopied) = transmit(&mut w.b, &answer_big);
        assert_eq!(uncopied, 1);
        w.a.receive(&wire, 1 << 20);
        match w.a.take_answer(id) {
            Ok(o) => assert_eq!(o.payload.bytes, whole(&answer_big)),
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

/// A payload that ends with a byte string, as pb's codec encodes one: its length prefix, then
/// its bytes, which it can split off.
struct Tailed {
    head: Vec<u8>,
    tail: Option<Bytes>,
}

impl Tailed {
    fn new(before: &[u8], string: &Bytes) -> Tailed {
        let mut head = before.to_vec();
        crate::frame::put_string_len(&mut head, string.len());
        Tailed {
            head,
            tail: Some(string.clone()),
        }
    }

    /// The payload unsplit.
    fn whole(before: &[u8], string: &Bytes) -> Vec<u8> {
        let mut whole = before.to_vec();
        crate::frame::put_string_len(&mut whole, string.len());
        whole.extend_from_slice(string);
        whole
    }
}

impl Payload for Tailed {
    fn len(&self) -> usize {
        self.head.len() + self.tail.as_ref().map_or(0, Bytes::len)
    }

    fn take_tail(&mut self) -> Option<Bytes> {
        let tail = self.tail.take()?;
        let mut prefix = Vec::new();
        crate::frame::put_string_len(&mut prefix, tail.len());
        self.head.truncate(self.head.len() - prefix.len());
        self.head.extend_from_slice(&crate::frame::TAIL_MARKER);
        Some(tail)
    }

    fn queue(self, out: &mut Outbox) {
        out.append_payload(Bytes::from(self.head));
        if let Some(t) = self.tail {
            out.append_payload(t);
        }
    }
}

/// Two sides that both read split frames.
fn splitting(b: Limits) -> World {
    let mut w = World::with_limits(Limits::default(), b);
    for side in [&mut w.a, &mut w.b] {
        side.broker.set_split_frames(true);
        side.decoder.accept_tails(true);
    }
    w
}

#[test]
fn large_trailing_strings_go_as_tails_and_arrive_apart_counted_whole() {
    let narrow = Limits {
        max_frame_len: 256 * 1024,
        max_call_bytes: 0,
        ..Limits::default()
    };
    let mut w = splitting(narrow);
    // Five calls of 250 000 bytes do not fit in a 1 MiB window: the fifth parks, split too.
    let big = Bytes::from((0..250_000).map(|i| i as u8).collect::<Vec<u8>>());
    for _ in 0..5 {
        w.a.try_call_with(0, "m", Tailed::new(b"args", &big), &[])
            .unwrap();
    }
    assert_eq!(w.a.broker.stats().parked_calls, 1);
    let (wire, uncopied) = transmit(&mut w.a, &big);
    assert_eq!(uncopied, 4);
    assert_eq!(
        u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) & crate::frame::SPLIT_FLAG,
        crate::frame::SPLIT_FLAG
    );
    // Delivered in small pieces: each tail is read into an allocation of its own.
    w.b.receive(&wire, 7000);
    assert_eq!(w.b.incoming.len(), 4);
    let whole = Tailed::whole(b"args", &big);
    for call in &w.b.incoming {
        let args = Arrived {
            bytes: call.body.slice(call.args_at..),
            tail: call.tail.clone(),
        };
        assert_eq!(call.tail.as_deref(), Some(&big));
        assert_eq!(args.to_bytes(), whole);
        assert_eq!(args.len(), whole.len());
        assert!(!args.is_empty() && Arrived::from(Bytes::new()).is_empty());
    }
    // Both sides count the same bytes in the window.
    assert_eq!(
        w.b.broker.stats().call_bytes,
        w.a.broker.window_used,
        "what the receiver holds is what the sender counts"
    );

    // An answer in pieces with and without references goes split as well.
    let answer = Bytes::from(vec![9u8; 100_000]);
    for refs in [Vec::new(), vec![Ref::Local(7)]] {
        let id = w.b.answer_with(Tailed::new(b"ok", &answer), refs);
        let (wire, uncopied) = transmit(&mut w.b, &answer);
        assert_eq!(uncopied, 1);
        w.a.receive(&wire, 5000);
        let o = w.a.take_answer(id).unwrap();
        assert_eq!(o.payload.tail.as_deref(), Some(&answer));
        assert_eq!(o.payload.to_bytes(), Tailed::whole(b"ok", &answer));
    }
    // The parked call left split, when the first answer made room.
    let (wire, uncopied) = transmit(&mut w.a, &big);
    assert_eq!(uncopied, 1);
    w.b.receive(&wire, usize::MAX);
    let parked = w.b.incoming.back().unwrap();
    assert_eq!((parked.id, parked.tail.as_deref()), (5, Some(&big)));
    assert_eq!(w.b.broker.stats().call_bytes, w.a.broker.window_used);
}

#[test]
fn small_strings_and_peers_without_tails_get_whole_frames() {
    let big = Bytes::from(vec![1u8; 100_000]);
    let small = Bytes::from(vec![2u8; crate::frame::MIN_TAIL - 100]);
    for (split, string, want) in [
        (true, &small, false),
        (false, &big, false),
        (true, &big, true),
    ] {
        let mut w = World::new();
        w.a.broker.set_split_frames(split);
        w.b.decoder.accept_tails(true);
        w.a.try_call_with(0, "m", Tailed::new(b"x", string), &[])
            .unwrap();
        let (wire, _) = transmit(&mut w.a, string);
        w.b.receive(&wire, usize::MAX);
        let call = w.b.incoming.pop_front().unwrap();
        assert_eq!(call.tail.is_some(), want);
        let args = Arrived {
            bytes: call.body.slice(call.args_at..),
            tail: call.tail,
        };
        assert_eq!(args.to_bytes(), Tailed::whole(b"x", string));
    }
}

#[test]
fn a_split_frame_that_is_not_a_call_or_an_answer_closes_the_connection() {
    let mut w = World::new();
    let mut ping = BytesMut::new();
    Message::Ping { nonce: 1 }.encode(&mut ping);
    let frame = Frame {
        body: ping.freeze(),
        tail: Some(Box::new(Bytes::from_static(b"tail"))),
    };
    let mut make = |_, _| unreachable!("no references");
    assert!(matches!(
        w.b.broker.handle_frame(frame, &mut make),
        Err(ProtocolError::Frame(crate::frame::FrameError::BadSplit(_)))
    ));
}
