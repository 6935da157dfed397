//! The tokio driver: pumps a byte stream through a [`Dispatcher`], runs responders, switches
//! to TLS for StartTLS, and answers the requests of the connection's [`AmpConnection`] handles.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::Dispatcher;
use super::calls::{Calls, Request};
use super::codec::{AmpBox, SmallBytes};
use super::command::{
    AmpCallError, NoErrors, UNHANDLED_ERROR_CODE, UNKNOWN_ERROR_CODE, python_bytes_repr,
};
use super::dispatch::{
    AmpProtocolError, DisconnectReason, Event, START_TLS, SendError, tag_number,
};
use super::locator::{AmpReply, Locator};
use crate::wake::FlagWake;
use pb_proto::hash::IdHasher;
use pb_proto::liveness::{Liveness, Timeout};

/// Run none of the peer's commands and take no new calls while this much output waits to be
/// written.
pub(super) const HIGH_WATER: usize = 256 * 1024;
pub(super) const READ_CHUNK: usize = 16 * 1024;
pub(super) const TLS_ERROR_CODE: &[u8] = b"TLS_ERROR";

pub(super) type RawResult<T> = Result<T, AmpCallError<NoErrors>>;

/// The driver's clock as pb-proto's explicit `now` (tokio's clock, so paused time works).
pub(super) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// A plain stream, or the same stream after StartTLS.
pub(super) enum Transport<S> {
    Plain(S),
    Client(Box<tokio_rustls::client::TlsStream<S>>),
    Server(Box<tokio_rustls::server::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Writes some of `out`, or flushes when it is empty; cancel-safe like `write` and `flush`.
pub(super) async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &[u8],
) -> io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(out).await.map(Some)
    }
}

/// Polls `f` once, without a waker to call back: its output if it was ready at once.
pub(super) fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let f = std::pin::pin!(f);
    match f.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// The message a panic was raised with, when it is text.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(not text)"
    }
}

/// Why [`Driver::pump`] returned.
pub(super) enum Pumped {
    Closed(DisconnectReason),
    SwitchTls,
}

pub(super) struct TlsClientRequest {
    pub(super) tag: Bytes,
    pub(super) config: Arc<rustls::ClientConfig>,
    pub(super) server_name: ServerName<'static>,
    pub(super) reply: oneshot::Sender<RawResult<()>>,
}

/// A command of the peer's held back: its name, tag, arguments and box's encoded length.
pub(super) type HeldCommand = (SmallBytes, Option<SmallBytes>, AmpBox, usize);

pub(super) struct Driver {
    pub(super) dispatcher: Dispatcher,
    pub(super) locator: Arc<Locator>,
    /// The handles' requests, and the slots our calls wait in.
    pub(super) calls: Arc<Calls>,
    /// The requests taken from the queue at once (kept for its allocation).
    pub(super) batch: Vec<Request>,
    /// Answers to our calls, by slot, left in their slots together once a pass is done.
    pub(super) answers: Vec<(usize, RawResult<AmpBox>)>,
    /// Scratch room for the wakers of the callers answered.
    pub(super) wakers: Vec<Waker>,
    /// Whether anybody can still call: a handle is alive, or a request is queued.
    pub(super) requests_open: bool,
    /// The slot of each of our calls awaiting its answer, by its tag's number (ours, so a
    /// cheap hash will do).
    pub(super) pending: HashMap<u64, usize, BuildHasherDefault<IdHasher>>,
    pub(super) tls_client: Option<TlsClientRequest>,
    pub(super) responders: JoinSet<AmpReply>,
    /// The tag and command name of each running responder, and what its box held in memory
    /// ([`AmpBox::memory_len`]), by task id.
    pub(super) running: HashMap<tokio::task::Id, (Option<SmallBytes>, SmallBytes, usize)>,
    /// What the boxes of running responders held in memory (`AmpConfig::max_responder_bytes`).
    pub(super) running_bytes: usize,
    /// The peer's commands read but not run yet, in order (`AmpConfig::max_held_commands`):
    /// they wait for room while answers to our calls are read on.
    pub(super) held: VecDeque<HeldCommand>,
    /// What the commands in `held` hold in memory (`AmpConfig::max_held_bytes`).
    pub(super) held_bytes: usize,
    pub(super) out: BytesMut,
    pub(super) need_flush: bool,
    /// The peer shut down its writing half; no more input will come.
    pub(super) peer_eof: bool,
    pub(super) read_buf: Box<[u8]>,
    pub(super) close_reason: Option<DisconnectReason>,
    pub(super) closed: watch::Sender<Option<DisconnectReason>>,
    /// The idle timer: when the last complete box came from the peer.
    pub(super) live: Liveness,
    /// Boxes decoded by the time the idle timer last heard of them.
    pub(super) boxes_seen: u64,
    /// This side is not reading, or runs responders for the peer: its silence is not idleness.
    pub(super) busy: bool,
    /// The peer's address, when known, for the logs.
    pub(super) peer: Option<SocketAddr>,
    /// Writes that made progress, and what the write-stall timer saw when it last fired (that
    /// count, and whether output was waiting): a stall is output waiting at two firings in a
    /// row with no write between.
    pub(super) writes: u64,
    pub(super) stall_seen: (u64, bool),
}

impl Driver {
    pub(super) async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut transport = Transport::Plain(stream);
        let reason = loop {
            let (mut rd, mut wr) = tokio::io::split(transport);
            match self.pump(&mut rd, &mut wr).await {
                Pumped::Closed(
                    reason @ (DisconnectReason::IdleTimeout(_) | DisconnectReason::WriteStalled(_)),
                ) => {
                    // The peer is presumed gone: one attempt at a clean close (a TLS
                    // close_notify), but no waiting on a peer that may never read it.
                    let _ = poll_once(async {
                        wr.flush().await?;
                        wr.shutdown().await
                    });
                    break reason;
                }
                Pumped::Closed(reason) => {
                    // Best effort: the peer may already be gone.
                    let _ = wr.flush().await;
                    let _ = wr.shutdown().await;
                    break reason;
                }
                Pumped::SwitchTls => match self.switch_tls(rd.unsplit(wr)).await {
                    Ok(t) => transport = t,
                    Err(reason) => break reason,
                },
            }
        };
        self.finish(reason);
    }

    pub(super) async fn pump<S>(
        &mut self,
        rd: &mut ReadHalf<Transport<S>>,
        wr: &mut WriteHalf<Transport<S>>,
    ) -> Pumped
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Set lazily, as the native reader's: a box moves the deadline without touching the
        // timer, and a timer that fires early is re-armed.
        let timing = self.live.is_enabled();
        let timer = tokio::time::sleep_until(self.live.poll_timeout().into());
        tokio::pin!(timer);
        // Checked lazily too: the timer fires once a period and looks at what changed.
        let stall = self.dispatcher.config().write_stall_timeout;
        let stall_timer = tokio::time::sleep(stall.unwrap_or(Duration::ZERO));
        tokio::pin!(stall_timer);
        // Both timers are polled only after they woke the driver, not at every turn of the loop
        // (most turns are reads, writes and requests): they wake `side`, which notes it.
        let side = Arc::new(FlagWake::default());
        let side_waker = Waker::from(side.clone());
        let mut known_task = None;
        // Whether the stall timer was polled since output began to wait (it is polled only
        // then: a stall needs waiting output, and a timer that fired meanwhile only starts a
        // period of its own, see below).
        let mut stall_armed = false;
        loop {
            let max_running = self.dispatcher.config().max_in_flight_responders;
            self.take_ready(max_running);
            // What is ready goes out now if the transport takes it without waiting (as it
            // nearly always does): the answer to a lone command, or a lone request, then
            // costs no turn of the loop of its own. What it does not take waits below.
            if !self.out.is_empty()
                && let Some(written) = poll_once(wr.write(&self.out))
                && let Err(closed) = self.wrote(written, wr)
            {
                return closed;
            }
            let received = self.dispatcher.boxes_received();
            if timing && received != self.boxes_seen {
                self.boxes_seen = received;
                self.live.handle_frame(now());
            }
            let closing = self.dispatcher.is_closing();
            let switching = self.dispatcher.is_switching_to_tls();
            if self.out.is_empty() && !self.need_flush {
                if closing {
                    return Pumped::Closed(
                        self.close_reason
                            .clone()
                            .unwrap_or(DisconnectReason::LocalClosed),
                    );
                }
                if switching {
                    return Pumped::SwitchTls;
                }
            }
            if !closing
                && !self.requests_open
                && self.locator.is_empty()
                && self.pending.is_empty()
                && self.tls_client.is_none()
            {
                // Nobody can call through this connection and nothing can be answered on it.
                self.close_with(DisconnectReason::LocalClosed);
                continue;
            }
            if self.peer_eof
                && self.responders.is_empty()
                && self.held.is_empty()
                && self.out.is_empty()
                && !self.need_flush
            {
                self.dispatcher.close();
                return Pumped::Closed(DisconnectReason::PeerClosed);
            }
            let can_read = !self.peer_eof && !closing && !switching && self.may_decode(max_running);
            let can_request = !closing
                && self.requests_open
                && self.out.len() + self.dispatcher.held_output() < HIGH_WATER;
            // Not reading, or still working for the peer, is this side's silence, not the
            // peer's: the idle time counts from when that ends.
            let busy = !can_read || !self.responders.is_empty() || !self.held.is_empty();
            if busy != self.busy {
                self.busy = busy;
                if !busy && timing {
                    self.live.handle_frame(now());
                }
            }
            let waiting = stall.is_some() && (!self.out.is_empty() || self.need_flush);
            if !waiting {
                stall_armed = false;
            } else if !stall_armed {
                side.force();
            }
            // Everything that was ready is in `out` by now: write it first, in one go, and only
            // then wait for more.
            tokio::select! {
                biased;
                r = write_or_flush(wr, &self.out), if !self.out.is_empty() || self.need_flush => match r {
                    Ok(Some(n)) => {
                        if let Err(closed) = self.wrote(Ok(n), wr) {
                            return closed;
                        }
                    }
                    Ok(None) => self.need_flush = false,
                    Err(e) => return Pumped::Closed(DisconnectReason::Io(e.to_string())),
                },
                Some(done) = self.responders.join_next_with_id(), if !self.responders.is_empty() => {
                    self.handle_reply(done);
                }
                // A wake-up: `take_ready` takes what was queued.
                () = std::future::poll_fn(|cx| self.calls.poll_woken(cx)), if can_request => {}
                r = rd.read(&mut self.read_buf), if can_read => match r {
                    Ok(0) => {
                        // The peer may only have shut down its writing half: answer what it
                        // already asked before closing, as a half-closing client expects. Our
                        // own asks can get no answer now: they fail at once (as Twisted fails
                        // all outgoing when the connection is lost), so that a responder waiting
                        // on one ends and the connection closes.
                        self.peer_eof = true;
                        self.fail_pending_asks();
                    }
                    Ok(n) => self.dispatcher.handle_input(self.read_buf.get(..n).unwrap_or(&[])),
                    Err(e) => {
                        self.dispatcher.close();
                        return Pumped::Closed(DisconnectReason::Io(e.to_string()));
                    }
                },
                (stalled, idle) = std::future::poll_fn(|cx| {
                    if !side.take(cx.waker(), &mut known_task) {
                        return Poll::Pending;
                    }
                    let mut side_cx = Context::from_waker(&side_waker);
                    let stalled = waiting && {
                        stall_armed = true;
                        stall_timer.as_mut().poll(&mut side_cx).is_ready()
                    };
                    let idle = timing && timer.as_mut().poll(&mut side_cx).is_ready();
                    if stalled || idle { Poll::Ready((stalled, idle)) } else { Poll::Pending }
                }), if waiting || timing => {
                    if stalled {
                        // Output waiting in `out` with no write between two firings. A pending
                        // flush alone is no stall: a transport that buffers (TLS) takes every
                        // write at once, and its flush's progress cannot be seen.
                        let seen = (self.writes, !self.out.is_empty());
                        if seen.1 && self.stall_seen == seen {
                            let after = stall.unwrap_or_default();
                            tracing::warn!(peer = ?self.peer, ?after, "amp: closing connection: the peer reads none of our output");
                            // An abort: the peer reads nothing, so nothing more can be written.
                            self.out.clear();
                            self.dispatcher.close();
                            return Pumped::Closed(DisconnectReason::WriteStalled(after));
                        }
                        self.stall_seen = seen;
                        stall_timer
                            .as_mut()
                            .reset(crate::deadline::after(stall.unwrap_or_default()));
                        // Polled once more after its reset, rather than trusting that its waker
                        // outlives the reset.
                        side.force();
                    }
                    if idle {
                        if busy {
                            self.live.handle_frame(now());
                        } else if let Some(Timeout::Idle(after)) = self.live.handle_timeout(now()) {
                            tracing::warn!(peer = ?self.peer, ?after, "amp: closing connection: no complete box from the peer within idle_timeout");
                            // An abort: a peer that sends nothing may read nothing either.
                            self.out.clear();
                            self.dispatcher.close();
                            return Pumped::Closed(DisconnectReason::IdleTimeout(after));
                        }
                        timer.as_mut().reset(self.live.poll_timeout().into());
                        side.force();
                    }
                }
                else => {
                    // Nothing to wait for: no reading (a configuration that lets no responder
                    // run), no handle, no output and no timer. Closing beats waiting forever.
                    tracing::error!("amp: connection driver has nothing to wait for; closing");
                    self.dispatcher.close();
                    return Pumped::Closed(DisconnectReason::LocalClosed);
                }
            }
        }
    }

    /// Takes note of a write of `out`'s first bytes: `Err` with why the connection must close
    /// if it failed (or wrote nothing).
    fn wrote<W: AsyncWrite + Unpin>(
        &mut self,
        written: io::Result<usize>,
        wr: &mut W,
    ) -> Result<(), Pumped> {
        let n = match written {
            Ok(0) => {
                return Err(Pumped::Closed(DisconnectReason::Io(
                    "write returned zero".into(),
                )));
            }
            Ok(n) => n,
            Err(e) => return Err(Pumped::Closed(DisconnectReason::Io(e.to_string()))),
        };
        self.out.advance(n);
        self.writes += 1;
        // All written: flush now if the transport can at once (plain TCP always can), rather
        // than in a turn of the loop of its own.
        self.need_flush = !self.out.is_empty()
            || match poll_once(wr.flush()) {
                Some(Ok(())) => false,
                Some(Err(e)) => return Err(Pumped::Closed(DisconnectReason::Io(e.to_string()))),
                None => true,
            };
        Ok(())
    }

    /// Takes in everything that is ready without waiting (decoded boxes, finished responders,
    /// queued requests) and gathers the output it makes, so that one write carries all of it.
    /// Per box, a wait in `select!` would cost a poll of every branch and, worse, a write.
    pub(super) fn take_ready(&mut self, max_running: usize) {
        loop {
            let mut progress = false;
            // Held commands first, in order, as room comes; all of them once the connection is
            // closing: then nothing more is read, and what was is dispatched, as Twisted
            // dispatches it, before the close.
            while !self.held.is_empty()
                && (self.may_run(max_running) || self.dispatcher.is_closing())
                && let Some((name, tag, args, len)) = self.held.pop_front()
            {
                self.held_bytes -= len;
                self.handle_command(name, tag, args);
                self.dispatcher.transmit_into(&mut self.out);
                progress = true;
            }
            while (self.dispatcher.is_closing() || self.may_decode(max_running))
                && let Some(event) = self.dispatcher.poll_event()
            {
                match event {
                    // A command behind held ones, or one that may not run now, waits; answers
                    // and errors to our calls go through.
                    // The built-in StartTLS runs no responder: it needs no room, and a running
                    // responder may be waiting for an answer that the peer sends only once
                    // StartTLS is answered (Twisted's client holds what it sends meanwhile).
                    Event::Command { name, tag, args }
                        if self.held.is_empty()
                            && name.as_ref() == START_TLS.as_bytes()
                            && !self.locator.contains(START_TLS) =>
                    {
                        self.handle_command(name, tag, args);
                    }
                    Event::Command { name, tag, args }
                        if !self.held.is_empty()
                            || !(self.may_run(max_running) || self.dispatcher.is_closing()) =>
                    {
                        // Copied out of the received frame, which may share its allocation
                        // with much more (other boxes, keys the dispatcher took out), into
                        // allocations of just its size; counted by what it holds in memory
                        // (its table of pairs too, many times a short pair's wire size), so
                        // that a held command holds what it is counted for.
                        let (name, tag, args) = held_copy(name, tag, args);
                        let len = std::mem::size_of::<HeldCommand>()
                            + name.as_ref().len()
                            + tag.as_ref().map_or(0, |t| t.as_ref().len())
                            + args.memory_len();
                        self.held_bytes += len;
                        self.held.push_back((name, tag, args, len));
                    }
                    event => self.handle_event(event),
                }
                self.dispatcher.transmit_into(&mut self.out);
                progress = true;
            }
            while let Some(done) = self.responders.try_join_next_with_id() {
                self.handle_reply(done);
                progress = true;
            }
            self.dispatcher.transmit_into(&mut self.out);
            if self.can_take_requests() {
                // Everything queued at once, under one acquisition of the lock.
                let mut batch = std::mem::take(&mut self.batch);
                let open = self
                    .calls
                    .take_queue(&mut batch)
                    .unwrap_or(self.requests_open);
                progress |= open != self.requests_open || !batch.is_empty();
                self.requests_open = open;
                let mut requests = batch.drain(..);
                while self.can_take_requests()
                    && let Some(req) = requests.next()
                {
                    self.handle_request(req);
                    self.dispatcher.transmit_into(&mut self.out);
                }
                // What the output has no room for yet goes back, ahead of anything newer.
                if requests.len() > 0 {
                    let mut rest: Vec<Request> = requests.collect();
                    self.calls.put_back(&mut rest);
                } else {
                    drop(requests);
                }
                self.batch = batch;
            }
            if !progress {
                break;
            }
        }
        self.dispatcher.transmit_into(&mut self.out);
        // The callers answered in this pass, all under one acquisition of the lock.
        self.calls.deliver(&mut self.answers, &mut self.wakers);
    }

    /// Whether the handles' requests may be taken now: not closing, and the output below
    /// [`HIGH_WATER`].
    fn can_take_requests(&self) -> bool {
        !self.dispatcher.is_closing()
            && self.requests_open
            && self.out.len() + self.dispatcher.held_output() < HIGH_WATER
    }

    /// Whether another command of the peer's may run now: fewer than `max_running`
    /// responders run, holding less than `AmpConfig::max_responder_bytes` of boxes, and our
    /// output is below [`HIGH_WATER`] (a peer that does not read its answers gets no more).
    #[inline]
    fn may_run(&self, max_running: usize) -> bool {
        self.responders.len() < max_running
            && self.running_bytes < self.dispatcher.config().max_responder_bytes
            && self.out.len() < HIGH_WATER
    }

    /// Whether to decode (and read) the peer's input: when its commands may run, or, while
    /// they must wait, when calls of ours await answers and what is held back is within
    /// `AmpConfig::max_held_commands` and `max_held_bytes`. Answers are read on so that two
    /// peers never both stop reading for the same reason: our calls' answers are what the
    /// running responders may wait for, and what frees the peer's output. A command that
    /// asks for StartTLS and is held stops decoding: what follows it may be TLS.
    #[inline]
    fn may_decode(&self, max_running: usize) -> bool {
        if self.held.is_empty() && self.may_run(max_running) {
            return true;
        }
        let config = self.dispatcher.config();
        (!self.pending.is_empty() || self.tls_client.is_some())
            && self.held.len() < config.max_held_commands
            && self.held_bytes < config.max_held_bytes
            && self
                .held
                .back()
                .is_none_or(|(name, ..)| name.as_ref() != START_TLS.as_bytes())
    }

    pub(super) fn close_with(&mut self, reason: DisconnectReason) {
        if self.close_reason.is_none() {
            self.close_reason = Some(reason);
        }
        self.dispatcher.close();
    }

    pub(super) fn handle_event(&mut self, event: Event) {
        match event {
            Event::Command { name, tag, args } => self.handle_command(name, tag, args),
            Event::Answer { tag, answer } => {
                if self.tls_client.as_ref().is_some_and(|t| t.tag == tag) {
                    // The switch itself happens in `run` once the output is flushed.
                    return;
                }
                if let Some(slot) = tag_number(&tag).and_then(|n| self.pending.remove(&n)) {
                    self.answers.push((slot, Ok(answer)));
                }
            }
            Event::Error {
                tag,
                code,
                description,
            } => {
                if let Some(tls) = self.tls_client.take_if(|t| t.tag == tag) {
                    let _ = tls
                        .reply
                        .send(Err(AmpCallError::Remote { code, description }));
                    return;
                }
                if let Some(slot) = tag_number(&tag).and_then(|n| self.pending.remove(&n)) {
                    self.answers
                        .push((slot, Err(AmpCallError::Remote { code, description })));
                }
            }
            Event::Closed(reason) => {
                tracing::warn!(%reason, "amp: closing connection");
                // An abort, as in Twisted: what is not written yet stays unwritten.
                self.out.clear();
                self.close_with(reason);
            }
            Event::Closing(reason) => {
                tracing::warn!(%reason, "amp: closing connection once the answers are written");
                // As Twisted's `loseConnection`: the dispatcher is closing already; what was
                // received before is still answered, then the output is flushed and it closes.
                self.close_reason.get_or_insert(reason);
            }
        }
    }

    pub(super) fn handle_command(
        &mut self,
        name: SmallBytes,
        tag: Option<SmallBytes>,
        args: AmpBox,
    ) {
        if name.as_ref() == START_TLS.as_bytes() && !self.locator.contains(START_TLS) {
            self.handle_start_tls(tag);
            return;
        }
        // What the box holds in memory, its table of pairs included, as a held one is counted.
        let len = args.memory_len();
        // The responder's own code runs in `dispatch_boxed` (a closure that makes the future)
        // and in the future's first poll: a panic in either is its failure, as in a later poll
        // (answered `UNKNOWN`), not the driver's.
        let locator = &self.locator;
        let dispatched = std::panic::catch_unwind(AssertUnwindSafe(|| {
            locator.dispatch_boxed(&name, args).map(|mut fut| {
                // Most responders answer without waiting: poll once here, and pay for a task
                // only if it waits. A no-op waker is enough, as the task polls it again at
                // once.
                let first = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                (fut, first)
            })
        }));
        match dispatched {
            Ok(Some((_, Poll::Ready(reply)))) => self.handle_reply_for(tag, name, reply),
            Ok(Some((fut, Poll::Pending))) => {
                let id = self.responders.spawn(fut).id();
                self.running.insert(id, (tag, name, len));
                self.running_bytes += len;
            }
            Err(panic) => {
                let why = format!("responder panicked: {}", panic_message(&*panic));
                self.handle_reply_for(tag, name, AmpReply::Failed(why));
            }
            Ok(None) => match tag {
                Some(tag) => {
                    let description = format!("Unhandled Command: {}", python_bytes_repr(&name));
                    let _ = self
                        .dispatcher
                        .error(tag, UNHANDLED_ERROR_CODE, &description, false);
                }
                None => self.failed_without_answer(&name, "no responder"),
            },
        }
    }

    pub(super) fn failed_without_answer(&mut self, name: &[u8], why: &str) {
        let name = Bytes::copy_from_slice(name);
        if self.dispatcher.config().close_on_failed_no_answer {
            tracing::warn!(command = ?name, why, "amp: command without _ask failed; closing");
            // As Twisted's `loseConnection`: the boxes read with this one are still answered.
            self.close_reason.get_or_insert(DisconnectReason::Protocol(
                AmpProtocolError::FailedWithoutAnswer(name),
            ));
            self.dispatcher.lose_connection();
        } else {
            tracing::warn!(command = ?name, why, "amp: command without _ask failed");
        }
    }

    pub(super) fn handle_start_tls(&mut self, tag: Option<SmallBytes>) {
        let Some(tag) = tag else {
            self.failed_without_answer(START_TLS.as_bytes(), "no _ask");
            return;
        };
        if self.dispatcher.config().tls_server.is_none() {
            let _ = self
                .dispatcher
                .error(tag, TLS_ERROR_CODE, "TLS not available", false);
            return;
        }
        if let Err(e) = self.dispatcher.accept_start_tls(&tag) {
            let why = match e {
                SendError::Closed => "connection closing",
                _ => "TLS already started",
            };
            let _ = self.dispatcher.error(tag, TLS_ERROR_CODE, why, false);
        }
    }

    pub(super) fn handle_reply(
        &mut self,
        done: Result<(tokio::task::Id, AmpReply), tokio::task::JoinError>,
    ) {
        let (id, reply) = match done {
            Ok((id, reply)) => (id, reply),
            Err(e) => (
                e.id(),
                AmpReply::Failed(format!("responder task failed: {e}")),
            ),
        };
        let Some((tag, name, len)) = self.running.remove(&id) else {
            return;
        };
        self.running_bytes -= len;
        self.handle_reply_for(tag, name, reply);
    }

    pub(super) fn handle_reply_for(
        &mut self,
        tag: Option<SmallBytes>,
        name: SmallBytes,
        reply: AmpReply,
    ) {
        match (tag, reply) {
            (Some(tag), AmpReply::Answer(b)) => {
                if let Err(e) = self.dispatcher.answer(&tag, b) {
                    self.unknown(tag, name, format!("bad answer: {e}"));
                }
            }
            (Some(tag), AmpReply::Error(e)) => {
                if e.fatal {
                    self.close_reason
                        .get_or_insert(DisconnectReason::LocalClosed);
                }
                if let Err(err) = self.dispatcher.error(&tag, e.code, &e.description, e.fatal) {
                    self.unknown(tag, name, format!("bad error answer: {err}"));
                }
            }
            (Some(tag), AmpReply::Failed(why)) => self.unknown(tag, name, why),
            (None, AmpReply::Answer(_)) => {}
            (None, AmpReply::Error(e)) => self.failed_without_answer(&name, &e.to_string()),
            (None, AmpReply::Failed(why)) => self.failed_without_answer(&name, &why),
        }
    }

    /// Twisted's treatment of an undeclared failure: log it, send `UNKNOWN`, close.
    pub(super) fn unknown(&mut self, tag: SmallBytes, name: SmallBytes, why: String) {
        tracing::error!(command = ?name, %why, "amp: responder failed; sending UNKNOWN and closing");
        self.close_reason.get_or_insert(DisconnectReason::Protocol(
            AmpProtocolError::ResponderFailed(name.into(), why),
        ));
        let _ = self
            .dispatcher
            .error(tag, UNKNOWN_ERROR_CODE, "Unknown Error", true);
    }

    /// The peer can send no more: every ask of ours awaiting an answer fails with
    /// `Disconnected(PeerClosed)`.
    fn fail_pending_asks(&mut self) {
        for (_, slot) in self.pending.drain() {
            let gone = Err(AmpCallError::Disconnected(DisconnectReason::PeerClosed));
            self.answers.push((slot, gone));
        }
        self.calls.deliver(&mut self.answers, &mut self.wakers);
    }

    pub(super) fn handle_request(&mut self, req: Request) {
        match req {
            // After the peer's end of input, an ask could never be answered.
            Request::Ask { slot, .. } if self.peer_eof => {
                let gone = Err(AmpCallError::Disconnected(DisconnectReason::PeerClosed));
                self.answers.push((slot, gone));
            }
            Request::Ask { name, args, slot } => match self.dispatcher.ask_numbered(&name, &args) {
                Ok(n) => {
                    self.pending.insert(n, slot);
                }
                Err(e) => {
                    let failed = Err(self.send_error(e));
                    self.answers.push((slot, failed));
                }
            },
            Request::Tell { name, args, reply } => {
                let r = self
                    .dispatcher
                    .tell(name, args)
                    .map_err(|e| self.send_error(e));
                let _ = reply.send(r);
            }
            Request::StartTls {
                config,
                server_name,
                reply,
            } => match self.dispatcher.ask_start_tls() {
                Ok(tag) => {
                    self.tls_client = Some(TlsClientRequest {
                        tag,
                        config,
                        server_name,
                        reply,
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(self.send_error(e)));
                }
            },
            Request::Close => self.close_with(DisconnectReason::LocalClosed),
        }
    }

    pub(super) fn send_error(&self, e: SendError) -> AmpCallError<NoErrors> {
        match e {
            SendError::Closed => AmpCallError::Disconnected(
                self.close_reason
                    .clone()
                    .unwrap_or(DisconnectReason::LocalClosed),
            ),
            SendError::TooManyOutstanding { max } => AmpCallError::TooManyOutstanding { max },
            SendError::OnlyOneTls => AmpCallError::OnlyOneTls,
            SendError::Encode(e) => AmpCallError::Encode(e),
        }
    }

    pub(super) async fn switch_tls<S>(
        &mut self,
        transport: Transport<S>,
    ) -> Result<Transport<S>, DisconnectReason>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let tls_error = |e: String| DisconnectReason::Protocol(AmpProtocolError::Tls(e));
        if self.dispatcher.buffered_input() != 0 {
            return Err(tls_error("plain text received after starttls".into()));
        }
        let Transport::Plain(stream) = transport else {
            return Err(tls_error("tls already started".into()));
        };
        // The whole handshake, not each read: a peer trickling it byte by byte is cut too.
        let limit = self.dispatcher.config().tls_handshake_timeout;
        let peer = self.peer;
        let timed_out = |_| {
            tracing::warn!(?peer, after = ?limit, "amp: closing connection: tls handshake not done within tls_handshake_timeout");
            DisconnectReason::TlsHandshakeTimeout(limit)
        };
        let result = match self.tls_client.take() {
            Some(req) => {
                let connector = tokio_rustls::TlsConnector::from(req.config);
                let connect = connector.connect(req.server_name, stream);
                let r = match tokio::time::timeout(limit, connect).await {
                    Ok(Ok(s)) => Ok(Transport::Client(Box::new(s))),
                    Ok(Err(e)) => Err(tls_error(e.to_string())),
                    Err(elapsed) => Err(timed_out(elapsed)),
                };
                let reply = match &r {
                    Ok(_) => Ok(()),
                    Err(reason) => Err(AmpCallError::Disconnected(reason.clone())),
                };
                let _ = req.reply.send(reply);
                r
            }
            None => match self.dispatcher.config().tls_server.clone() {
                Some(config) => {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    match tokio::time::timeout(limit, accept).await {
                        Ok(Ok(s)) => Ok(Transport::Server(Box::new(s))),
                        Ok(Err(e)) => Err(tls_error(e.to_string())),
                        Err(elapsed) => Err(timed_out(elapsed)),
                    }
                }
                None => Err(tls_error("no tls server configuration".into())),
            },
        };
        if result.is_ok() {
            self.dispatcher.tls_started();
            // A finished handshake is a sign of life, as a box is.
            self.live.handle_frame(now());
        } else {
            self.dispatcher.close();
        }
        result
    }

    pub(super) fn finish(mut self, reason: DisconnectReason) {
        self.dispatcher.close();
        self.calls.deliver(&mut self.answers, &mut self.wakers);
        self.pending.clear();
        if let Some(tls) = self.tls_client.take() {
            let _ = tls
                .reply
                .send(Err(AmpCallError::Disconnected(reason.clone())));
        }
        self.responders.abort_all();
        // Every call waiting or queued fails, and so does every request made from now on.
        let queued = self.calls.shut(&reason);
        self.closed.send_replace(Some(reason.clone()));
        for req in queued {
            let err = AmpCallError::Disconnected(reason.clone());
            match req {
                Request::Tell { reply, .. } | Request::StartTls { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Request::Ask { .. } | Request::Close => {}
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // After `finish` this does nothing; a driver that ends otherwise (a panic) must not
        // leave its callers waiting for answers that cannot come.
        let _ = self.calls.shut(&DisconnectReason::LocalClosed);
    }
}

/// A command to hold back, in allocations of its own: its name, tag and arguments as parts of
/// the received frame would keep that whole frame (and what shares its allocation) alive.
fn held_copy(
    name: SmallBytes,
    tag: Option<SmallBytes>,
    args: AmpBox,
) -> (SmallBytes, Option<SmallBytes>, AmpBox) {
    (
        SmallBytes::copy_from_slice(name.as_ref()),
        tag.map(|t| SmallBytes::copy_from_slice(t.as_ref())),
        args.to_compact(),
    )
}
