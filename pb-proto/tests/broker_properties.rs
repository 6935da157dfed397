//! Properties of the native broker (pb-proto's I/O-free core) under random input: two honest
//! brokers wired back to back through any interleaving of calls, answers, cancels, releases,
//! revocations and clock steps keep every promise of the call window and the tables, and a
//! hostile peer's frames, crafted at edge values or at random with colliding ids, never panic
//! the broker nor grow its tables past their limits.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pb_proto::broker::{Arrived, Broker, Event, Incoming, Outcome, Reply, Sending, Tokens};
use pb_proto::frame::FrameDecoder;
use pb_proto::limits::Limits;
use pb_proto::message::{CallExtras, Message, MessageLimits};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// A small driver for the native broker: tokens, a clock the test moves, two sides, a pipe.
// ---------------------------------------------------------------------------------------------

type ReleaseQueue = Rc<RefCell<Vec<(u64, u64, u64)>>>;

#[derive(Debug)]
struct Imp {
    conn: u64,
    id: u64,
    generation: u64,
    received: Cell<u64>,
    queue: ReleaseQueue,
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

#[derive(Debug, Clone)]
enum Ref {
    Local(u32),
    Remote(Rc<Imp>),
}

enum H {}

thread_local! {
    static CLOCK: Cell<Instant> = Cell::new(Instant::now());
}

fn set_clock(t: Instant) {
    CLOCK.with(|c| c.set(t));
}

fn clock() -> Instant {
    CLOCK.with(|c| c.get())
}

impl Tokens for H {
    type Object = Ref;
    type Import = Weak<Imp>;
    type Waiter = u64;
    type Watch = u64;

    fn classify(object: &Ref, conn: u64) -> Sending {
        match object {
            Ref::Local(n) => Sending::Exported(*n as usize),
            Ref::Remote(imp) if imp.conn == conn => Sending::Returned(imp.id),
            Ref::Remote(imp) => Sending::Exported(Rc::as_ptr(imp) as usize),
        }
    }

    fn receive_again(import: &Weak<Imp>) -> Option<Ref> {
        let imp = import.upgrade()?;
        imp.received.set(imp.received.get() + 1);
        Some(Ref::Remote(imp))
    }

    fn now() -> Instant {
        clock()
    }
}

struct Side {
    conn: u64,
    broker: Broker<H>,
    decoder: FrameDecoder,
    input: BytesMut,
    queue: ReleaseQueue,
    incoming: VecDeque<Incoming<Ref>>,
    /// Callers woken, by call id (the waiter is the id).
    answered: Vec<u64>,
    cancelled: Vec<u64>,
    exported: Vec<u64>,
    unexported: Vec<u64>,
    revoked: Vec<u64>,
    /// Updates delivered to a live handle, by the peer's id.
    updates: Vec<u64>,
    error: Option<String>,
    /// Every frame handed to the broker, decoded (for looking at what arrived, in order).
    seen: Vec<Message>,
}

impl Side {
    fn new(conn: u64, limits: Limits, root: Option<Ref>) -> Side {
        Side {
            conn,
            decoder: FrameDecoder::new(limits.receive().max_frame_len),
            broker: Broker::new(limits, conn, root),
            input: BytesMut::new(),
            queue: Rc::default(),
            incoming: VecDeque::new(),
            answered: Vec::new(),
            cancelled: Vec::new(),
            exported: Vec::new(),
            unexported: Vec::new(),
            revoked: Vec::new(),
            updates: Vec::new(),
            error: None,
            seen: Vec::new(),
        }
    }

    fn act(&mut self) {
        let mut events = Vec::new();
        self.broker.poll_events(&mut events);
        for event in events {
            match event {
                Event::Answered(id) => self.answered.push(id),
                Event::Exported { id, .. } => self.exported.push(id),
                Event::Resent { .. } => {}
                Event::Unexported { id, .. } => self.unexported.push(id),
                Event::Revoked(import) => {
                    if let Some(imp) = import.upgrade() {
                        self.revoked.push(imp.id);
                    }
                }
                Event::Update { import, .. } => {
                    if let Some(imp) = import.upgrade() {
                        self.updates.push(imp.id);
                    }
                }
                Event::Cancelled(id) => self.cancelled.push(id),
                Event::Dropped(_) => {}
            }
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        loop {
            if self.error.is_some() {
                return;
            }
            let body = match self.decoder.decode(&mut self.input) {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    self.error = Some(format!("framing: {e}"));
                    return;
                }
            };
            if let Ok(m) = Message::decode(body.clone(), &MessageLimits::default()) {
                self.seen.push(m);
            }
            let (conn, queue) = (self.conn, self.queue.clone());
            let mut make = |id, generation| {
                let imp = Rc::new(Imp {
                    conn,
                    id,
                    generation,
                    received: Cell::new(u64::from(id != 0)),
                    queue: queue.clone(),
                });
                (Rc::downgrade(&imp), Ref::Remote(imp))
            };
            match self.broker.handle_frame(body, &mut make) {
                Ok(Some(call)) => self.incoming.push_back(call),
                Ok(None) => {}
                Err(e) => self.error = Some(e.to_string()),
            }
            self.act();
        }
    }

    fn transmit(&mut self) -> Option<Bytes> {
        let released = std::mem::take(&mut *self.queue.borrow_mut());
        for (id, generation, count) in released {
            self.broker.release_imported(id, generation, count);
        }
        let (mut chunks, mut tail) = (Vec::new(), BytesMut::new());
        self.broker.poll_transmit(&mut chunks, &mut tail);
        chunks.push(tail.freeze());
        let write: Vec<u8> = chunks.concat();
        (!write.is_empty()).then(|| Bytes::from(write))
    }

    fn try_call(
        &mut self,
        target: u64,
        args: Bytes,
        refs: &[Ref],
        deadline: Option<u64>,
        waiter: u64,
    ) -> Result<u64, pb_proto::broker::Fault> {
        let id = self.broker.start_call(
            target,
            "m",
            args,
            refs,
            (Some(waiter), deadline, CallExtras::default()),
        )?;
        self.act();
        Ok(id)
    }

    fn take_answer(&mut self, id: u64) -> Option<Reply<Ref, Arrived>> {
        match self.broker.poll_answer(id, |_| {}) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }
}

struct World {
    a: Side,
    b: Side,
}

impl World {
    /// `a` dials `b`, which serves object 100 as its root; both hellos exchanged.
    fn with_limits(la: Limits, lb: Limits) -> World {
        let mut a = Side::new(1, la, None);
        let mut b = Side::new(2, lb, Some(Ref::Local(100)));
        let (ra, rb) = (a.broker.limits().receive(), b.broker.limits().receive());
        a.broker.set_peer_limits(Some(rb));
        b.broker.set_peer_limits(Some(ra));
        World { a, b }
    }

    /// Move everything each side has to send to the other, until nothing moves (bounded).
    fn settle(&mut self) {
        for _ in 0..1000 {
            let ab = self.a.transmit();
            let ba = self.b.transmit();
            if ab.is_none() && ba.is_none() {
                return;
            }
            if let Some(w) = ab {
                self.b.receive(&w);
            }
            if let Some(w) = ba {
                self.a.receive(&w);
            }
        }
        panic!("the brokers did not settle");
    }
}

/// The smallest window there is: 64 KiB frames, a 256 KiB window (four 60 000-byte calls fit).
fn narrow() -> Limits {
    Limits {
        max_frame_len: 64 * 1024,
        max_call_bytes: 0,
        ..Limits::default()
    }
}

// ---------------------------------------------------------------------------------------------
// A raw hostile peer.
// ---------------------------------------------------------------------------------------------

/// A frame body from a message.
fn body(m: &Message) -> Bytes {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    b.freeze()
}

fn no_refs(_: u64, _: u64) -> (Weak<Imp>, Ref) {
    panic!("no references expected")
}

/// Hostile frames of every kind, at edge values, never panic; the broker answers with errors.
#[test]
fn hostile_frames_at_edge_values_never_panic() {
    let edge = [
        0u64,
        1,
        2,
        127,
        128,
        u32::MAX as u64,
        u64::MAX - 1,
        u64::MAX,
    ];
    let mut b: Broker<H> = Broker::new(Limits::default(), 2, Some(Ref::Local(100)));
    b.set_peer_limits(Some(Limits::default().receive()));
    let queue: ReleaseQueue = Rc::default();
    let mut make = |id, generation| {
        let imp = Rc::new(Imp {
            conn: 2,
            id,
            generation,
            received: Cell::new(1),
            queue: queue.clone(),
        });
        (Rc::downgrade(&imp), Ref::Remote(imp))
    };
    let mut kept = Vec::new();
    for &v in &edge {
        for m in [
            Message::Answer {
                id: v,
                ok: true,
                refs: vec![],
                payload: Bytes::new(),
            },
            Message::Fault {
                id: v,
                kind: pb_proto::message::FaultKind::Cancelled,
                message: String::new(),
            },
            Message::Release(vec![(v, v), (v, 1)]),
            Message::Cancel { id: v },
            Message::Revoked { object: v },
            Message::Update {
                object: v,
                payload: Bytes::new(),
            },
            Message::Ping { nonce: v },
            Message::Pong { nonce: v },
            Message::Credit { bytes: v },
            Message::Limits(pb_proto::handshake::ReceiveLimits {
                max_frame_len: v as usize,
                max_refs_per_message: v as usize,
                max_release_entries: v as usize,
                max_call_bytes: Some(v as usize),
            }),
        ] {
            let mut fresh: Broker<H> = Broker::new(
                Limits {
                    max_violations: u32::MAX,
                    ..Limits::default()
                },
                2,
                Some(Ref::Local(100)),
            );
            fresh.set_peer_limits(Some(Limits::default().receive()));
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _ = fresh.handle_frame(body(&m), &mut no_refs);
                let (mut c, mut t) = (Vec::new(), BytesMut::new());
                fresh.poll_transmit(&mut c, &mut t);
                let _ = fresh.start_call(
                    0,
                    "m",
                    Bytes::new(),
                    &[],
                    (Some(1), None, Default::default()),
                );
                fresh.poll_transmit(&mut c, &mut t);
            }));
            assert!(r.is_ok(), "broker panicked on {m:?}");
            let _ = b.handle_frame(body(&m), &mut make);
        }
        // Calls with edge ids, targets, deadlines and refs.
        for refs in [
            vec![],
            vec![pb_proto::message::RefDesc::Sender(v)],
            vec![pb_proto::message::RefDesc::Receiver(v)],
        ] {
            let m = Message::Call {
                id: v,
                target: v,
                method: Bytes::from_static(b"m"),
                answer: true,
                deadline_ms: Some(v),
                extras: CallExtras::default(),
                refs,
                payload: Bytes::new(),
            };
            let mut fresh: Broker<H> = Broker::new(Limits::default(), 2, Some(Ref::Local(100)));
            let q: ReleaseQueue = Rc::default();
            let mut mk = |id, generation| {
                let imp = Rc::new(Imp {
                    conn: 2,
                    id,
                    generation,
                    received: Cell::new(1),
                    queue: q.clone(),
                });
                (Rc::downgrade(&imp), Ref::Remote(imp))
            };
            let r = catch_unwind(AssertUnwindSafe(|| {
                if let Ok(Some(call)) = fresh.handle_frame(body(&m), &mut mk) {
                    kept.push(call.id);
                    fresh.finish_call(
                        call.id,
                        true,
                        Some(Ok(Outcome {
                            ok: true,
                            payload: Bytes::new(),
                            refs: Vec::<Ref>::new(),
                        })),
                        (false, call.charge),
                    );
                }
            }));
            assert!(r.is_ok(), "broker panicked on {m:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Randomized: two honest brokers, calls, answers, cancels, releases, revocations, limits.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// a calls b's root with `refs` of a's objects (by number) and a payload of `size` bytes.
    Call {
        size: usize,
        refs: Vec<u32>,
        deadline: Option<u64>,
    },
    /// a calls an object b sent it (the k-th held reference), if any.
    CallHeld { k: usize },
    /// b answers its oldest call, sending back `refs` (b's own objects), or some of a's that
    /// the call carried when `echo`.
    Answer { refs: Vec<u32>, echo: bool },
    /// b's handler waits (watched); the oldest call is moved to the back of the line.
    Watch,
    /// a cancels its k-th oldest pending call.
    Cancel { k: usize },
    /// a takes the answers that arrived.
    Take,
    /// a drops the k-th reference it holds.
    Drop { k: usize },
    /// b revokes its k-th export.
    Revoke { k: usize },
    /// Move bytes (or not: they pile up, and cross).
    Settle,
    /// The driver clock jumps by the signed number of seconds.
    Clock { secs: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![Just(0usize), Just(10), 1000usize..70_000], proptest::collection::vec(0u32..4, 0..3), proptest::option::of(0u64..300))
            .prop_map(|(size, refs, deadline)| Op::Call { size, refs, deadline }),
        2 => (0usize..4).prop_map(|k| Op::CallHeld { k }),
        4 => (proptest::collection::vec(200u32..203, 0..3), any::<bool>()).prop_map(|(refs, echo)| Op::Answer { refs, echo }),
        1 => Just(Op::Watch),
        2 => (0usize..4).prop_map(|k| Op::Cancel { k }),
        2 => Just(Op::Take),
        2 => (0usize..6).prop_map(|k| Op::Drop { k }),
        1 => (0usize..4).prop_map(|k| Op::Revoke { k }),
        4 => Just(Op::Settle),
        1 => (-20i64..20).prop_map(|secs| Op::Clock { secs }),
    ]
}

/// What the test knows of a's calls.
#[derive(Debug, Default)]
struct Book {
    /// Calls started, not yet taken or cancelled.
    open: BTreeMap<u64, ()>,
    /// Calls whose answer a took.
    taken: Vec<u64>,
    /// Calls a cancelled.
    cancelled: Vec<u64>,
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    set_clock(Instant::now() + Duration::from_secs(100_000));
    let mut w = World::with_limits(Limits::default(), narrow());
    let mut book = Book::default();
    let mut held: Vec<Ref> = Vec::new();
    let mut watched: Vec<u64> = Vec::new();
    let mut waiter = 1000u64;
    for op in ops {
        match op {
            Op::Call {
                size,
                refs,
                deadline,
            } => {
                let refs: Vec<Ref> = refs.into_iter().map(Ref::Local).collect();
                waiter += 1;
                if let Ok(id) = w.a.try_call(
                    0,
                    Bytes::from(vec![3u8; size]),
                    &refs,
                    deadline,
                    id_waiter(waiter),
                ) {
                    book.open.insert(id, ());
                }
            }
            Op::CallHeld { k } => {
                if let Some(Ref::Remote(imp)) = held.get(k) {
                    let target = imp.id;
                    waiter += 1;
                    if let Ok(id) = w.a.try_call(
                        target,
                        Bytes::from_static(b"x"),
                        &[],
                        None,
                        id_waiter(waiter),
                    ) {
                        book.open.insert(id, ());
                    }
                }
            }
            Op::Answer { refs, echo } => {
                let mut out: Vec<Ref> = refs.into_iter().map(Ref::Local).collect();
                if echo && let Some(call) = w.b.incoming.front() {
                    out.extend(call.refs.iter().cloned());
                }
                if let Some(call) = w.b.incoming.pop_front() {
                    let tracked = watched.contains(&call.id);
                    let outcome = Outcome {
                        ok: true,
                        payload: Bytes::from_static(b"r"),
                        refs: out,
                    };
                    w.b.broker.finish_call(
                        call.id,
                        call.answer,
                        Some(Ok(outcome)),
                        (tracked, call.charge),
                    );
                    watched.retain(|&id| id != call.id);
                    w.b.act();
                }
            }
            Op::Watch => {
                if let Some(call) = w.b.incoming.pop_front() {
                    if call.answer && !watched.contains(&call.id) {
                        w.b.broker.watch(call.id, call.id).expect("open");
                        watched.push(call.id);
                    }
                    w.b.incoming.push_back(call);
                }
            }
            Op::Cancel { k } => {
                if let Some(&id) = book.open.keys().nth(k) {
                    book.open.remove(&id);
                    book.cancelled.push(id);
                    drop(w.a.broker.cancel_call(id));
                    w.a.act();
                }
            }
            Op::Take => {
                let ids: Vec<u64> = book.open.keys().copied().collect();
                for id in ids {
                    if let Some(r) = w.a.take_answer(id) {
                        book.open.remove(&id);
                        book.taken.push(id);
                        if let Ok(o) = r {
                            held.extend(o.refs);
                        }
                    }
                }
            }
            Op::Drop { k } => {
                if k < held.len() {
                    held.remove(k);
                }
            }
            Op::Revoke { k } => {
                if let Some(&id) = w.b.exported.get(k) {
                    w.b.broker.revoke_export(id);
                    w.b.act();
                }
            }
            Op::Settle => w.settle(),
            Op::Clock { secs } => {
                let now = clock();
                let next = if secs >= 0 {
                    now.checked_add(Duration::from_secs(secs as u64))
                } else {
                    now.checked_sub(Duration::from_secs(secs.unsigned_abs()))
                };
                if let Some(t) = next {
                    set_clock(t);
                }
            }
        }
        // A cancelled call: b's handler hears of it; it is finished as a driver would.
        let cancelled: Vec<u64> = std::mem::take(&mut w.b.cancelled);
        for id in cancelled {
            if let Some(at) = w.b.incoming.iter().position(|c| c.id == id) {
                let call = w.b.incoming.remove(at).unwrap();
                w.b.broker.finish_call(
                    call.id,
                    call.answer,
                    None::<Reply<Ref>>,
                    (true, call.charge),
                );
                watched.retain(|&x| x != id);
                w.b.act();
            }
        }
        prop_assert!(w.a.error.is_none(), "a: {:?}", w.a.error);
        prop_assert!(w.b.error.is_none(), "b: {:?}", w.b.error);
        prop_assert!(w.b.broker.stats().call_bytes <= w.b.broker.limits().max_call_bytes);
    }
    // Wind down: answer everything, take everything, drop everything.
    for _ in 0..200 {
        w.settle();
        let cancelled: Vec<u64> = std::mem::take(&mut w.b.cancelled);
        for id in cancelled {
            if let Some(at) = w.b.incoming.iter().position(|c| c.id == id) {
                let call = w.b.incoming.remove(at).unwrap();
                w.b.broker.finish_call(
                    call.id,
                    call.answer,
                    None::<Reply<Ref>>,
                    (true, call.charge),
                );
                watched.retain(|&x| x != id);
                w.b.act();
            }
        }
        if w.b.incoming.is_empty() && w.a.broker.stats().parked_calls == 0 {
            break;
        }
        while let Some(call) = w.b.incoming.pop_front() {
            let tracked = watched.contains(&call.id);
            let outcome = Outcome {
                ok: true,
                payload: Bytes::from_static(b"r"),
                refs: Vec::<Ref>::new(),
            };
            w.b.broker.finish_call(
                call.id,
                call.answer,
                Some(Ok(outcome)),
                (tracked, call.charge),
            );
            watched.retain(|&id| id != call.id);
            w.b.act();
        }
    }
    w.settle();
    let ids: Vec<u64> = book.open.keys().copied().collect();
    for id in ids {
        let r = w.a.take_answer(id);
        prop_assert!(
            r.is_some(),
            "call {} never answered (a: {:?}, b: {:?})",
            id,
            w.a.broker,
            w.b.broker
        );
        if let Some(Ok(o)) = r {
            held.extend(o.refs);
        }
        book.taken.push(id);
    }
    // Each caller woken at most once.
    let mut woken = w.a.answered.clone();
    woken.sort_unstable();
    let n = woken.len();
    woken.dedup();
    prop_assert_eq!(n, woken.len(), "a caller woken twice");
    drop(held);
    w.settle();
    w.settle();
    let (sa, sb) = (w.a.broker.stats(), w.b.broker.stats());
    prop_assert_eq!(sb.in_flight_calls, 0);
    prop_assert_eq!(sb.call_bytes, 0, "b's window drifted");
    prop_assert_eq!(sa.parked_calls, 0);
    prop_assert_eq!(sa.pending_calls, 0);
    prop_assert_eq!(
        sb.exported,
        0,
        "b still exports objects a let go of: {:?}",
        sb
    );
    prop_assert_eq!(sa.imported, 0);
    // a's window is back to empty: a call of the whole window leaves at once.
    let id =
        w.a.try_call(0, Bytes::from(vec![0u8; 60_000]), &[], None, 7)
            .unwrap();
    let _ = id;
    for k in 0..3 {
        w.a.try_call(0, Bytes::from(vec![0u8; 60_000]), &[], None, 8 + k)
            .unwrap();
    }
    prop_assert_eq!(
        w.a.broker.stats().parked_calls,
        0,
        "a's count of b's window drifted"
    );
    Ok(())
}

fn id_waiter(w: u64) -> u64 {
    w
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever the interleaving, no side sees a protocol error, the receiver's call window
    /// holds, every call is answered once, and once all is answered and dropped the tables
    /// and both sides' counts of the window are back to empty.
    #[test]
    fn two_brokers_under_random_interleavings_keep_every_promise(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Randomized hostile peer: crafted frames of every kind, small ids so that they collide.
// ---------------------------------------------------------------------------------------------

fn hostile_message() -> impl Strategy<Value = Message> {
    use pb_proto::message::{FaultKind, RefDesc};
    let id = prop_oneof![0u64..6, Just(u64::MAX)];
    let desc = prop_oneof![
        (0u64..6).prop_map(RefDesc::Sender),
        (0u64..6).prop_map(RefDesc::Receiver)
    ];
    prop_oneof![
        4 => (id.clone(), 0u64..4, any::<bool>(), proptest::option::of(prop_oneof![0u64..3, Just(u64::MAX)]), proptest::collection::vec(desc.clone(), 0..4), 0usize..3000)
            .prop_map(|(id, target, answer, deadline_ms, refs, n)| Message::Call {
                id, target, method: Bytes::from_static(b"m"), answer, deadline_ms,
                extras: CallExtras::default(), refs, payload: Bytes::from(vec![0u8; n]) }),
        2 => (id.clone(), any::<bool>(), proptest::collection::vec(desc, 0..4))
            .prop_map(|(id, ok, refs)| Message::Answer { id, ok, refs, payload: Bytes::new() }),
        1 => id.clone().prop_map(|id| Message::Fault { id, kind: FaultKind::Cancelled, message: String::new() }),
        2 => proptest::collection::vec((0u64..6, prop_oneof![0u64..3, Just(u64::MAX)]), 0..4).prop_map(Message::Release),
        2 => id.clone().prop_map(|id| Message::Cancel { id }),
        1 => (0u64..6).prop_map(|object| Message::Revoked { object }),
        1 => (0u64..6).prop_map(|object| Message::Update { object, payload: Bytes::new() }),
        1 => any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        1 => any::<u64>().prop_map(|bytes| Message::Credit { bytes }),
        1 => Just(Message::Goodbye),
    ]
}

#[derive(Debug, Clone)]
enum Hostile {
    Frame(Message),
    /// Our side: call the peer (sending one of our objects sometimes).
    OurCall(Option<u32>),
    /// Our side: the oldest incoming call finishes (watched or not), with one of our objects.
    Finish(bool, Option<u32>),
    Cancel(u64),
    Drain,
    Revoke(u64),
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        6 => hostile_message().prop_map(Hostile::Frame),
        2 => proptest::option::of(0u32..3).prop_map(Hostile::OurCall),
        2 => (any::<bool>(), proptest::option::of(0u32..3)).prop_map(|(w, r)| Hostile::Finish(w, r)),
        1 => (0u64..6).prop_map(Hostile::Cancel),
        1 => (0u64..6).prop_map(Hostile::Revoke),
        1 => Just(Hostile::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random frames of every kind from a peer, mixed with our own calls, answers, cancels
    /// and revocations: no panic, and the tables stay within their limits.
    #[test]
    fn a_hostile_peer_never_panics_the_broker_nor_grows_its_tables(ops in proptest::collection::vec(hostile(), 1..80)) {
        let limits = Limits {
            max_in_flight_calls: 3,
            max_imports: 4,
            max_exports: 4,
            max_pending_calls: 4,
            max_violations: u32::MAX,
            ..Limits::default()
        };
        let mut s = Side::new(2, limits.clone(), Some(Ref::Local(100)));
        s.broker.set_peer_limits(Some(Limits::default().receive()));
        let mut held: Vec<Ref> = Vec::new();
        let mut waiter = 0;
        let r = catch_unwind(AssertUnwindSafe(|| {
            for op in ops {
                match op {
                    Hostile::Frame(m) => {
                        let mut wire = BytesMut::new();
                        let b = body(&m);
                        wire.extend_from_slice(&(b.len() as u32).to_be_bytes());
                        wire.extend_from_slice(&b);
                        s.error = None;
                        s.receive(&wire);
                    }
                    Hostile::OurCall(r) => {
                        waiter += 1;
                        let refs: Vec<Ref> = r.into_iter().map(Ref::Local).collect();
                        let _ = s.try_call(0, Bytes::from_static(b"a"), &refs, None, waiter);
                    }
                    Hostile::Finish(watch, r) => {
                        if let Some(call) = s.incoming.pop_front() {
                            held.extend(call.refs.iter().cloned());
                            if watch && call.answer && s.broker.watch(call.id, call.id).is_ok() {
                                s.incoming.push_back(call);
                            } else {
                                let refs: Vec<Ref> = r.into_iter().map(Ref::Local).collect();
                                let o = Outcome { ok: true, payload: Bytes::from_static(b"r"), refs };
                                s.broker.finish_call(call.id, call.answer, Some(Ok(o)), (false, call.charge));
                                s.act();
                            }
                        }
                    }
                    Hostile::Cancel(id) => { drop(s.broker.cancel_call(id)); s.act(); }
                    Hostile::Revoke(id) => { s.broker.revoke_export(id); s.act(); }
                    Hostile::Drain => s.broker.start_draining(true),
                }
                if held.len() > 3 { held.remove(0); }
                let _ = s.transmit();
                let st = s.broker.stats();
                assert!(st.imported <= 4, "imports over max_imports: {st:?}");
                assert!(st.exported <= 4, "exports over max_exports: {st:?}");
                assert!(st.in_flight_calls <= 3, "calls over max_in_flight_calls: {st:?}");
                assert!(st.pending_calls <= 4, "pending over max_pending_calls: {st:?}");
                assert!(st.call_bytes <= s.broker.limits().max_call_bytes);
            }
        }));
        prop_assert!(r.is_ok(), "the broker panicked on a hostile peer's input");
    }
}
