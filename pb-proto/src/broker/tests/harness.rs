//! The two-broker harness: two brokers, a virtual clock, and a pipe each way that delays,
//! splits and reorders whole writes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use bytes::{Bytes, BytesMut};

use super::super::*;
use crate::frame::{Decoded, Frame, FrameDecoder, Tail};

/// The releases a side's dropped handles queue, as a driver's release queue: (id, generation,
/// count).
pub(super) type ReleaseQueue = Rc<RefCell<Vec<(u64, u64, u64)>>>;

/// A reference to the peer's object, as a driver's handle: it counts receipts and queues its
/// release when the last clone is dropped.
#[derive(Debug)]
pub(super) struct Imp {
    pub(super) conn: u64,
    pub(super) id: u64,
    pub(super) generation: u64,
    pub(super) received: Cell<u64>,
    pub(super) queue: ReleaseQueue,
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

/// An object: one of ours, named by a number, or a reference to the peer's.
#[derive(Debug, Clone)]
pub(super) enum Ref {
    Local(u32),
    Remote(Rc<Imp>),
}

impl Ref {
    pub(super) fn remote_or_local(self) -> u32 {
        match self {
            Ref::Local(n) => n,
            Ref::Remote(imp) => imp.id as u32,
        }
    }

    pub(super) fn remote(&self) -> &Rc<Imp> {
        match self {
            Ref::Remote(imp) => imp,
            Ref::Local(n) => panic!("object {n} is ours"),
        }
    }
}

#[derive(Debug)]
pub(super) enum Harness {}

impl Tokens for Harness {
    type Object = Ref;
    type Import = Weak<Imp>;
    /// The call's id.
    type Waiter = u64;
    /// The call's id.
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

    /// The test's clock: it moves only when a test moves it ([`advance`]).
    fn now() -> std::time::Instant {
        CLOCK.with(|c| c.get())
    }
}

thread_local! {
    static CLOCK: std::cell::Cell<std::time::Instant> = std::cell::Cell::new(std::time::Instant::now());
}

/// Moves the test's clock ([`Harness::now`]) on by `by`.
pub(super) fn advance(by: std::time::Duration) {
    CLOCK.with(|c| c.set(c.get() + by));
}

/// Moves the test's clock ([`Harness::now`]) back by `by` (a driver's clock need not be
/// monotonic), if it can go back that far.
pub(super) fn rewind(by: std::time::Duration) {
    CLOCK.with(|c| c.set(c.get().checked_sub(by).unwrap_or(c.get())));
}

/// One side: its broker, its input, and what its events said.
pub(super) struct Side {
    pub(super) conn: u64,
    pub(super) broker: Broker<Harness>,
    pub(super) decoder: FrameDecoder,
    pub(super) input: BytesMut,
    /// A split frame whose tail is being read: its head, and the tail so far.
    pub(super) reading: Option<(Bytes, Tail)>,
    pub(super) queue: ReleaseQueue,
    /// The peer's calls handed back, not answered yet.
    pub(super) incoming: VecDeque<Incoming<Ref>>,
    /// Callers woken, by call id.
    pub(super) answered: Vec<u64>,
    pub(super) cancelled: Vec<u64>,
    pub(super) exported: Vec<u64>,
    pub(super) resent: Vec<u64>,
    pub(super) unexported: Vec<u64>,
    pub(super) revoked: Vec<u64>,
    /// Updates delivered to a live handle: (the peer's id, generation, payload).
    pub(super) updates: Vec<(u64, u64, Bytes)>,
    /// Updates for a handle that was dead by then.
    pub(super) stale_updates: usize,
    pub(super) dropped: usize,
    pub(super) error: Option<ProtocolError>,
    /// Calls made so far.
    pub(super) calls: u64,
    /// Handles made for references the peer sent (each an allocation a driver would make).
    pub(super) made: usize,
}

impl Side {
    pub(super) fn new(conn: u64, limits: Limits, root: Option<Ref>) -> Side {
        Side {
            conn,
            decoder: FrameDecoder::new(limits.receive().max_frame_len),
            broker: Broker::new(limits, conn, root),
            input: BytesMut::new(),
            reading: None,
            queue: Rc::default(),
            incoming: VecDeque::new(),
            answered: Vec::new(),
            cancelled: Vec::new(),
            exported: Vec::new(),
            resent: Vec::new(),
            unexported: Vec::new(),
            revoked: Vec::new(),
            updates: Vec::new(),
            stale_updates: 0,
            made: 0,
            dropped: 0,
            error: None,
            calls: 0,
        }
    }

    /// Take the broker's events, as a driver would once it let go of the broker.
    pub(super) fn act(&mut self) {
        let mut events = Vec::new();
        self.broker.poll_events(&mut events);
        for event in events {
            match event {
                Event::Answered(id) => self.answered.push(id),
                Event::Exported { id, .. } => self.exported.push(id),
                Event::Resent { id, .. } => self.resent.push(id),
                Event::Unexported { id, .. } => self.unexported.push(id),
                Event::Revoked(import) => {
                    if let Some(imp) = import.upgrade() {
                        self.revoked.push(imp.id);
                    }
                }
                Event::Update { import, payload } => match import.upgrade() {
                    Some(imp) => self.updates.push((imp.id, imp.generation, payload)),
                    None => self.stale_updates += 1,
                },
                Event::Cancelled(id) => self.cancelled.push(id),
                Event::Dropped(_) => self.dropped += 1,
            }
        }
    }

    /// Receive bytes, in chunks of `chunk` bytes.
    pub(super) fn receive(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.max(1)) {
            self.input.extend_from_slice(piece);
            loop {
                if self.error.is_some() {
                    return;
                }
                // A split frame's tail being read takes what arrives first, as a driver reads
                // it into its own allocation.
                if let Some((head, mut tail)) = self.reading.take() {
                    let n = tail.missing().min(self.input.len());
                    tail.buf().extend_from_slice(&self.input.split_to(n));
                    if !tail.is_complete() {
                        self.reading = Some((head, tail));
                        break;
                    }
                    self.deliver(Frame {
                        body: head,
                        tail: Some(Box::new(tail.finish())),
                    });
                    continue;
                }
                match self.decoder.next(&mut self.input) {
                    Ok(Some(Decoded::Frame(body))) => self.deliver(body.into()),
                    Ok(Some(Decoded::Split { head, tail_len })) => {
                        match Tail::start(tail_len, &mut self.input).expect("room for a tail") {
                            Err(whole) => self.deliver(Frame {
                                body: head,
                                tail: Some(Box::new(whole)),
                            }),
                            Ok(tail) => self.reading = Some((head, tail)),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => panic!("framing error: {e}"),
                }
            }
        }
    }

    /// Hand a received frame to the broker.
    fn deliver(&mut self, frame: Frame) {
        let (conn, queue) = (self.conn, self.queue.clone());
        let made = &mut self.made;
        let mut make = |id, generation| {
            *made += 1;
            let imp = Rc::new(Imp {
                conn,
                id,
                generation,
                received: Cell::new(u64::from(id != 0)),
                queue: queue.clone(),
            });
            (Rc::downgrade(&imp), Ref::Remote(imp))
        };
        match self.broker.handle_frame(frame, &mut make) {
            Ok(Some(call)) => self.incoming.push_back(call),
            Ok(None) => {}
            Err(e) => self.error = Some(e),
        }
        self.act();
    }

    /// What the broker has to send, as one write (releases folded in first, as a driver's
    /// writer does).
    pub(super) fn transmit(&mut self) -> Option<Bytes> {
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

    pub(super) fn call(&mut self, target: u64, method: &str, args: &[u8], refs: &[Ref]) -> u64 {
        self.try_call(target, method, args, refs)
            .unwrap_or_else(|f| panic!("call refused: {f:?}"))
    }

    pub(super) fn try_call(
        &mut self,
        target: u64,
        method: &str,
        args: &[u8],
        refs: &[Ref],
    ) -> Result<u64, Fault> {
        self.try_call_with(target, method, Bytes::copy_from_slice(args), refs)
    }

    /// As [`Side::try_call`], with any payload.
    pub(super) fn try_call_with(
        &mut self,
        target: u64,
        method: &str,
        args: impl Payload,
        refs: &[Ref],
    ) -> Result<u64, Fault> {
        // The waiter is the call's id, which the broker gives out in order from 1.
        let next = self.calls + 1;
        let id = self.broker.start_call(
            target,
            method,
            args,
            refs,
            (Some(next), None, CallExtras::default()),
        )?;
        assert_eq!(id, next);
        self.calls = id;
        self.act();
        Ok(id)
    }

    /// Answer the oldest incoming call.
    pub(super) fn answer(&mut self, payload: &[u8], refs: Vec<Ref>) -> u64 {
        self.answer_with(Bytes::copy_from_slice(payload), refs)
    }

    /// As [`Side::answer`], with any payload.
    pub(super) fn answer_with(&mut self, payload: impl Payload, refs: Vec<Ref>) -> u64 {
        let call = self.incoming.pop_front().expect("a call to answer");
        let outcome = Outcome {
            ok: true,
            payload,
            refs,
        };
        self.broker
            .finish_call(call.id, true, Some(Ok(outcome)), (false, call.charge));
        self.act();
        call.id
    }

    pub(super) fn take_answer(&mut self, id: u64) -> Reply<Ref, Arrived> {
        match self.broker.poll_answer(id, |_| {}) {
            Poll::Ready(reply) => reply,
            Poll::Pending => panic!("call {id} has no answer yet"),
        }
    }
}

/// A write on its way, and when it arrives.
pub(super) struct Write {
    pub(super) at: u64,
    pub(super) bytes: Bytes,
}

/// Two sides and the pipes between them, on a virtual clock (milliseconds).
pub(super) struct World {
    pub(super) a: Side,
    pub(super) b: Side,
    /// Writes from a to b, and from b to a, in the order they arrive.
    pub(super) ab: VecDeque<Write>,
    pub(super) ba: VecDeque<Write>,
    pub(super) now: u64,
    /// How long a write takes each way.
    pub(super) delay: (u64, u64),
    /// The size of the pieces a write arrives in.
    pub(super) chunk: usize,
}

impl World {
    /// `a` dials `b`, which serves object 100 as its root; both hellos have been exchanged.
    pub(super) fn new() -> World {
        World::with_limits(Limits::default(), Limits::default())
    }

    pub(super) fn with_limits(a: Limits, b: Limits) -> World {
        let mut a = Side::new(1, a, None);
        let mut b = Side::new(2, b, Some(Ref::Local(100)));
        let (la, lb) = (a.broker.limits().receive(), b.broker.limits().receive());
        a.broker.set_peer_limits(Some(lb));
        b.broker.set_peer_limits(Some(la));
        World {
            a,
            b,
            ab: VecDeque::new(),
            ba: VecDeque::new(),
            now: 0,
            delay: (1, 1),
            chunk: usize::MAX,
        }
    }

    /// Each side writes what it has; the writes arrive after the pipe's delay.
    pub(super) fn flush(&mut self) {
        if let Some(bytes) = self.a.transmit() {
            let at = self.now + self.delay.0;
            self.ab.push_back(Write { at, bytes });
        }
        if let Some(bytes) = self.b.transmit() {
            let at = self.now + self.delay.1;
            self.ba.push_back(Write { at, bytes });
        }
    }

    /// Advance the clock by `ms`, delivering every write that arrives meanwhile (each
    /// direction in order).
    pub(super) fn advance(&mut self, ms: u64) {
        self.flush();
        self.now += ms;
        while self.ab.front().is_some_and(|w| w.at <= self.now) {
            let w = self.ab.pop_front().expect("a write");
            self.b.receive(&w.bytes, self.chunk);
        }
        while self.ba.front().is_some_and(|w| w.at <= self.now) {
            let w = self.ba.pop_front().expect("a write");
            self.a.receive(&w.bytes, self.chunk);
        }
        self.flush();
    }

    /// Run until nothing is in flight (bounded).
    pub(super) fn settle(&mut self) {
        for _ in 0..1000 {
            self.advance(1);
            if self.ab.is_empty() && self.ba.is_empty() {
                return;
            }
        }
        panic!("the brokers did not settle");
    }
}
