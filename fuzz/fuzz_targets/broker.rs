//! pb-proto's broker on an arbitrary stream from the peer: whatever the frames say, it never
//! panics, its tables stay within their limits, and every reference it hands out is released
//! without breaking its counts, and the peer's calls it holds or runs stay within its call
//! window. The input is split into a byte stream (the first byte chooses the read sizes,
//! whether frames are held back first as a congested driver holds them, and when the broker
//! makes calls of its own, cancels them and answers the peer's).
#![no_main]

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pb_proto::broker::{Broker, Event, Outcome, Sending, Tokens};
use pb_proto::frame::{Decoded, Frame, FrameDecoder, Tail};
use pb_proto::limits::Limits;

type Queue = Rc<RefCell<Vec<(u64, u64, u64)>>>;

struct Imp {
    id: u64,
    generation: u64,
    received: Cell<u64>,
    queue: Queue,
}

impl Drop for Imp {
    fn drop(&mut self) {
        if self.id != 0 {
            self.queue
                .borrow_mut()
                .push((self.id, self.generation, self.received.get()));
        }
    }
}

#[derive(Clone)]
enum Ref {
    Local(u32),
    Remote(Rc<Imp>),
}

enum Fuzz {}

impl Tokens for Fuzz {
    type Object = Ref;
    type Import = Weak<Imp>;
    type Waiter = ();
    type Watch = ();

    fn classify(object: &Ref, _conn: u64) -> Sending {
        match object {
            Ref::Local(n) => Sending::Exported(*n as usize),
            Ref::Remote(imp) => Sending::Returned(imp.id),
        }
    }

    fn receive_again(import: &Weak<Imp>) -> Option<Ref> {
        let imp = import.upgrade()?;
        imp.received.set(imp.received.get() + 1);
        Some(Ref::Remote(imp))
    }

    /// A clock that moves a millisecond per chunk of input (see the loop).
    fn now() -> std::time::Instant {
        let base = *BASE.get_or_init(std::time::Instant::now);
        base + std::time::Duration::from_millis(CLOCK.with(Cell::get))
    }
}

static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

thread_local! {
    static CLOCK: Cell<u64> = const { Cell::new(0) };
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_exports: 64,
        max_imports: 64,
        max_in_flight_calls: 8,
        max_frame_len: 64 * 1024,
        // The least window: four frames.
        max_call_bytes: 0,
        ..Limits::default()
    }
    .enforced();
    let mut broker = Broker::<Fuzz>::new(limits.clone(), 1, Some(Ref::Local(1)));
    broker.set_peer_limits(Some(limits.receive()));
    let mut decoder = FrameDecoder::new(limits.receive().max_frame_len);
    // Split frames both ways, when the input says so.
    let split = control & 0x40 != 0;
    decoder.accept_tails(split);
    broker.set_split_frames(split);
    let queue: Queue = Rc::default();
    let mut held: Vec<Ref> = Vec::new();
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    let (mut out, mut tail) = (Vec::new(), BytesMut::new());
    let step = usize::from(control % 16) + 1;
    let hold = control & 0x20 != 0;
    let mut held_frames: std::collections::VecDeque<Frame> = Default::default();
    // A split frame whose tail is being read.
    let mut reading: Option<(Bytes, Tail)> = None;
    let mut last_call = None;
    for (n, piece) in stream.chunks(step).enumerate() {
        CLOCK.with(|c| c.set(c.get() + 1));
        input.extend_from_slice(piece);
        loop {
            let (body, was_held) = if hold && n % 3 == 0 && !held_frames.is_empty() {
                (held_frames.pop_front().expect("a held frame"), true)
            } else if let Some((head, mut tail)) = reading.take() {
                let got = tail.missing().min(input.len());
                tail.buf().extend_from_slice(&input.split_to(got));
                if !tail.is_complete() {
                    reading = Some((head, tail));
                    break;
                }
                let frame = Frame {
                    body: head,
                    tail: Some(Box::new(tail.finish())),
                };
                (frame, false)
            } else {
                match decoder.next(&mut input) {
                    Ok(Some(Decoded::Frame(body))) => (Frame::from(body), false),
                    Ok(Some(Decoded::Split { head, tail_len })) => {
                        match Tail::start(tail_len, &mut input) {
                            Ok(Err(tail)) => (
                                Frame {
                                    body: head,
                                    tail: Some(Box::new(tail)),
                                },
                                false,
                            ),
                            Ok(Ok(tail)) => {
                                reading = Some((head, tail));
                                break;
                            }
                            Err(_) => return,
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            };
            // A cancel of a held call takes it out of line: it never runs (as the driver does).
            if let Some(id) = pb_proto::message::cancelled_id(&body.body)
                && let Some(at) = held_frames
                    .iter()
                    .position(|f| pb_proto::message::call_id(&f.body) == Some(id))
                && let Some(call) = held_frames.remove(at)
            {
                if broker.drop_held_call(&call).is_err() {
                    return;
                }
                assert!(broker.stats().call_bytes <= limits.max_call_bytes);
                continue;
            }
            if hold && !was_held && n % 3 != 0 {
                match broker.hold_frame(&body) {
                    Ok(true) => held_frames.push_back(body),
                    Ok(false) => {}
                    Err(_) => return,
                }
                assert!(broker.stats().call_bytes <= limits.max_call_bytes);
                continue;
            }
            let q = queue.clone();
            let mut make = |id, generation| {
                let imp = Rc::new(Imp {
                    id,
                    generation,
                    received: Cell::new(u64::from(id != 0)),
                    queue: q.clone(),
                });
                (Rc::downgrade(&imp), Ref::Remote(imp))
            };
            let handled = if was_held {
                broker.handle_held_frame(body, &mut make)
            } else {
                broker.handle_frame(body, &mut make)
            };
            match handled {
                Ok(Some(call)) => {
                    // Answer with the call's own references and a new object of ours.
                    let mut refs = call.refs;
                    refs.push(Ref::Local(10 + (n % 8) as u32));
                    let outcome = Outcome {
                        ok: true,
                        payload: Bytes::from_static(b"ok"),
                        refs,
                    };
                    broker.finish_call(call.id, call.answer, Some(Ok(outcome)), (false, call.charge));
                }
                Ok(None) => {}
                Err(_) => return,
            }
            broker.poll_events(&mut events);
            for event in events.drain(..) {
                if let Event::Dropped(r) | Event::Exported { object: r, .. } = event {
                    held.push(r);
                }
            }
            let stats = broker.stats();
            assert!(stats.exported <= limits.max_exports);
            assert!(stats.in_flight_calls <= limits.max_in_flight_calls);
            assert!(stats.call_bytes <= limits.max_call_bytes);
        }
        if control & 0x10 != 0 {
            let extras = pb_proto::message::CallExtras::default();
            // Calls large enough to fill the peer's window now and then, and park.
            let args = Bytes::from(vec![0; 1 << (n % 17)]);
            // Some with a deadline, which a parked call carries, updated, when it leaves.
            let deadline_ms = (n % 3 == 0).then_some(1 << (n % 40));
            last_call = broker
                .start_call(0, "f", args, &held, (Some(()), deadline_ms, extras))
                .ok()
                .or(last_call);
        }
        if control & 0x40 != 0
            && n % 5 == 4
            && let Some(id) = last_call.take()
        {
            drop(broker.cancel_call(id));
        }
        if n % 3 == 0 {
            held.clear();
            let released = std::mem::take(&mut *queue.borrow_mut());
            for (id, generation, count) in released {
                broker.release_imported(id, generation, count);
            }
            broker.poll_transmit(&mut out, &mut tail);
            out.clear();
            tail.clear();
        }
    }
    broker.close(pb_proto::broker::Fault::disconnected());
    broker.poll_events(&mut events);
});
