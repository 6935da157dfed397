//! The request/response state of one AMP connection, with no I/O (Twisted's `BoxDispatcher`).

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use crate::hash::IdHasher;

use bytes::{Bytes, BytesMut};

use super::codec::{AmpBox, BoxCodec, BoxCodecConfig, BoxCodecError, MAX_VALUE_LENGTH, SmallBytes};

const ASK: &str = "_ask";
const ANSWER: &str = "_answer";
const COMMAND: &str = "_command";
const ERROR: &str = "_error";
const ERROR_CODE: &str = "_error_code";
const ERROR_DESCRIPTION: &str = "_error_description";
/// The command name of StartTLS.
pub const START_TLS: &str = "StartTLS";

/// The default of [`AmpConfig::max_held_commands`]: 16 times the default
/// `max_in_flight_responders`, as many as the Twisted PB dialect holds back for each call its
/// cap lets run.
pub const DEFAULT_MAX_HELD_COMMANDS: usize = 16 * 1024;

/// Limits and policies of one AMP connection.
///
/// `S` is the server side of StartTLS as the driver knows it (pb-core uses rustls's
/// `Arc<ServerConfig>`); the dispatcher only carries it, so this crate needs no TLS library.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AmpConfig<S = ()> {
    /// Limits on received boxes.
    pub codec: BoxCodecConfig,
    /// Limits on the boxes sent, checked as each is encoded (default: the default of
    /// [`AmpConfig::codec`], what a pb peer accepts unless told otherwise; Twisted accepts any
    /// number of keys and any length). A peer refuses a box over its limits by closing the
    /// connection, which fails every call on it; a box over these fails alone instead: a call
    /// with [`SendError::Encode`], an answer as a responder's failure (`UNKNOWN`). Raise them
    /// for a peer known to accept more.
    pub send_limits: BoxCodecConfig,
    /// The most asks of ours that may await an answer at once (default 1024); past it a call fails
    /// with the caller's "too many outstanding" error.
    pub max_outstanding: usize,
    /// The most incoming commands whose responders may run at once (default 1024); past it
    /// the peer's further commands wait (see [`AmpConfig::max_held_commands`]) until one
    /// finishes.
    pub max_in_flight_responders: usize,
    /// The most bytes of incoming commands (what their boxes hold in memory,
    /// [`AmpBox::memory_len`](crate::amp::codec::AmpBox::memory_len): their bytes and a few
    /// dozen bytes a pair) whose responders may run at once (default [`DEFAULT_MAX_CALL_BYTES`](crate::limits::DEFAULT_MAX_CALL_BYTES),
    /// 64 MiB, the native call window's default); past it the peer's further commands wait
    /// until one finishes. AMP cannot announce it (Twisted would not understand), so commands
    /// wait instead of being refused.
    pub max_responder_bytes: usize,
    /// The most of the peer's commands held back, read but not run, while they must wait
    /// (responders at [`AmpConfig::max_in_flight_responders`] or
    /// [`AmpConfig::max_responder_bytes`], or our output congested) and calls of ours await
    /// answers (default [`DEFAULT_MAX_HELD_COMMANDS`], 16 times the default
    /// `max_in_flight_responders`). Meanwhile the connection reads on, so that the answers
    /// to our calls, which running responders may wait for and which free the peer, still
    /// arrive; past this, or [`AmpConfig::max_held_bytes`], it stops reading until held
    /// commands run. With no call of ours awaiting an answer nothing is held: reading stops
    /// while commands must wait.
    pub max_held_commands: usize,
    /// The most bytes of the commands held back, as they hold them in memory (their boxes,
    /// copied out of the frames they came in: their bytes and a few dozen bytes a pair; see
    /// [`AmpConfig::max_held_commands`]; default
    /// [`DEFAULT_MAX_CALL_BYTES`](crate::limits::DEFAULT_MAX_CALL_BYTES), 64 MiB).
    pub max_held_bytes: usize,
    /// Close the connection on an answer or error for a tag never asked (default true, as Twisted).
    pub close_on_unknown_answer: bool,
    /// Close the connection when a command sent without `_ask` fails or is unhandled (default true,
    /// as Twisted).
    pub close_on_failed_no_answer: bool,
    /// The server side of StartTLS; without it, StartTLS is answered with `TLS_ERROR`.
    pub tls_server: Option<S>,
    /// The most connections a server (pb-core's `amp::serve`) keeps open at once (default
    /// 1 024); one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// The most of those from one source address, an IPv4 address or an IPv6 /64 (default 64),
    /// so that one address cannot take every slot.
    pub max_connections_per_address: usize,
    /// Close the connection after this long without one complete box from the peer (default
    /// 60 s, as pb's native `idle_timeout`; `None`: never), with
    /// [`DisconnectReason::IdleTimeout`]; calls awaiting answers fail with it.
    ///
    /// The rule is the native one: only complete boxes count, so a peer that trickles a box in
    /// byte by byte is as idle as a silent one, and our own calls awaiting answers do not keep
    /// the connection open (a peer that went away without a FIN is found out this way). While
    /// this side is not reading by its own choice (backpressure) or still runs a responder for
    /// the peer, the silence is ours and is not counted. AMP has no keep-alive: a connection
    /// that must stay open while quiet for longer, or a call answered after longer, needs a
    /// longer setting (on the side that would close), or a command of the application's own
    /// sent now and then.
    pub idle_timeout: Option<Duration>,
    /// How long a StartTLS handshake may take, on either side, once the transport switches to
    /// TLS (default 10 s, as pb's native `handshake_timeout`); past it the connection closes
    /// with [`DisconnectReason::TlsHandshakeTimeout`].
    pub tls_handshake_timeout: Duration,
    /// Close the connection when output waits to be written and none of it is written for this
    /// long (default [`DEFAULT_WRITE_STALL_TIMEOUT`](crate::limits::DEFAULT_WRITE_STALL_TIMEOUT),
    /// 60 s, as pb's native `write_stall_timeout`; `None`: never), with
    /// [`DisconnectReason::WriteStalled`]: a peer that asks and never reads would otherwise keep
    /// its connection, and its slot, for as long as it likes (while the output waits, this side
    /// runs none of the peer's commands and reads only for the answers to its own calls, by
    /// choice, so the idle timeout does not count). The stall is found between
    /// this long and twice this long after it began.
    pub write_stall_timeout: Option<Duration>,
}

impl<S> Default for AmpConfig<S> {
    #[inline]
    fn default() -> Self {
        Self {
            codec: BoxCodecConfig::default(),
            send_limits: BoxCodecConfig::default(),
            max_outstanding: 1024,
            max_in_flight_responders: 1024,
            max_responder_bytes: crate::limits::DEFAULT_MAX_CALL_BYTES,
            max_held_commands: DEFAULT_MAX_HELD_COMMANDS,
            max_held_bytes: crate::limits::DEFAULT_MAX_CALL_BYTES,
            close_on_unknown_answer: true,
            close_on_failed_no_answer: true,
            tls_server: None,
            max_connections: 1024,
            max_connections_per_address: 64,
            idle_timeout: Some(Duration::from_secs(60)),
            tls_handshake_timeout: Duration::from_secs(10),
            write_stall_timeout: Some(crate::limits::DEFAULT_WRITE_STALL_TIMEOUT),
        }
    }
}

impl<S> AmpConfig<S> {
    /// Sets [`AmpConfig::max_connections`].
    #[inline]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`AmpConfig::max_connections_per_address`].
    #[inline]
    pub fn max_connections_per_address(mut self, n: usize) -> Self {
        self.max_connections_per_address = n;
        self
    }

    /// Sets [`AmpConfig::idle_timeout`] (`None`: never).
    #[inline]
    pub fn idle_timeout(mut self, after: Option<Duration>) -> Self {
        self.idle_timeout = after;
        self
    }

    /// Sets [`AmpConfig::write_stall_timeout`] (`None`: never).
    #[inline]
    pub fn write_stall_timeout(mut self, after: Option<Duration>) -> Self {
        self.write_stall_timeout = after;
        self
    }

    /// Sets [`AmpConfig::tls_handshake_timeout`].
    #[inline]
    pub fn tls_handshake_timeout(mut self, after: Duration) -> Self {
        self.tls_handshake_timeout = after;
        self
    }

    /// Sets [`AmpConfig::codec`].
    #[inline]
    pub fn codec(mut self, codec: BoxCodecConfig) -> Self {
        self.codec = codec;
        self
    }

    /// Sets [`AmpConfig::send_limits`].
    #[inline]
    pub fn send_limits(mut self, limits: BoxCodecConfig) -> Self {
        self.send_limits = limits;
        self
    }

    /// Sets [`AmpConfig::max_outstanding`].
    #[inline]
    pub fn max_outstanding(mut self, n: usize) -> Self {
        self.max_outstanding = n;
        self
    }

    /// Sets [`AmpConfig::max_in_flight_responders`].
    #[inline]
    pub fn max_in_flight_responders(mut self, n: usize) -> Self {
        self.max_in_flight_responders = n;
        self
    }

    /// Sets [`AmpConfig::max_responder_bytes`].
    #[inline]
    pub fn max_responder_bytes(mut self, bytes: usize) -> Self {
        self.max_responder_bytes = bytes;
        self
    }

    /// Sets [`AmpConfig::max_held_commands`].
    #[inline]
    pub fn max_held_commands(mut self, n: usize) -> Self {
        self.max_held_commands = n;
        self
    }

    /// Sets [`AmpConfig::max_held_bytes`].
    #[inline]
    pub fn max_held_bytes(mut self, bytes: usize) -> Self {
        self.max_held_bytes = bytes;
        self
    }

    /// Sets [`AmpConfig::close_on_unknown_answer`].
    #[inline]
    pub fn close_on_unknown_answer(mut self, yes: bool) -> Self {
        self.close_on_unknown_answer = yes;
        self
    }

    /// Sets [`AmpConfig::close_on_failed_no_answer`].
    #[inline]
    pub fn close_on_failed_no_answer(mut self, yes: bool) -> Self {
        self.close_on_failed_no_answer = yes;
        self
    }

    /// Sets [`AmpConfig::tls_server`], enabling the server side of StartTLS.
    #[inline]
    pub fn tls_server(mut self, config: S) -> Self {
        self.tls_server = Some(config);
        self
    }
}

/// What the peer sent, as the dispatcher understood it.
///
/// Exhaustive, unlike most of pb's enums: a driver must handle every event, and the compiler
/// should say so when one is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command for a responder; `tag` is `None` when no answer is wanted.
    Command {
        /// `_command`.
        name: SmallBytes,
        /// `_ask`, if present.
        tag: Option<SmallBytes>,
        /// The box without `_command` and `_ask`.
        args: AmpBox,
    },
    /// The answer to one of our asks.
    Answer {
        /// The tag we asked with.
        tag: SmallBytes,
        /// The box without `_answer`.
        answer: AmpBox,
    },
    /// An error answer to one of our asks.
    Error {
        /// The tag we asked with.
        tag: SmallBytes,
        /// `_error_code`.
        code: Bytes,
        /// `_error_description`, decoded as UTF-8 with replacement.
        description: String,
    },
    /// The connection must close at once, for this reason (an abort: output not yet taken is
    /// dropped); no events follow.
    Closed(DisconnectReason),
    /// The connection closes for this reason as Twisted's `loseConnection` closes it (see
    /// [`Dispatcher::lose_connection`]): the peer's input broke a limit. The boxes received
    /// before it were returned already and their answers still go out; nothing after it is
    /// read or dispatched. The driver closes once the output is written.
    Closing(DisconnectReason),
}

/// Why an outgoing box was not sent.
///
/// Exhaustive: a driver maps each of these to its callers' error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed,
    /// Too many asks await an answer.
    #[error("too many outstanding asks (at most {max})")]
    TooManyOutstanding {
        /// The configured maximum.
        max: usize,
    },
    /// StartTLS was already asked for or done on this connection.
    #[error("tls already started")]
    OnlyOneTls,
    /// The box breaks AMP's limits.
    #[error("cannot encode box")]
    Encode(#[source] BoxCodecError),
}

/// The connection's lifecycle.
///
/// ```text
/// Open ──ask StartTLS──▶ TlsAsked ──answer──▶ TlsSwitching ──tls_started──▶ Open (tls)
///   │                       └──error──▶ Open (held boxes released)
///   ├──answer StartTLS──▶ TlsSwitching
///   ├──fatal error sent, or lose_connection──▶ Closing ──output flushed by the driver──▶ closed
///   └──protocol violation / close──▶ Closed
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    /// We asked for StartTLS with this tag (its number); outgoing boxes are held until it is
    /// answered.
    TlsAsked(u64),
    /// The transport must switch to TLS before any more bytes are read or written.
    TlsSwitching,
    /// A fatal error was queued, or the connection is being lost (Twisted's
    /// `loseConnection`): nothing more is read or asked, but what was already received is
    /// still dispatched and answered until the driver has flushed the output and closes.
    Closing,
    Closed,
}

/// The protocol state of one AMP connection: feed it bytes with [`Dispatcher::handle_input`],
/// take what the peer sent with [`Dispatcher::poll_event`], send with [`Dispatcher::ask`],
/// [`Dispatcher::tell`], [`Dispatcher::answer`] and [`Dispatcher::error`], and write what
/// [`Dispatcher::poll_transmit`] yields. It does no I/O, so it can be driven by anything.
///
/// ```
/// # mod pb { pub use pb_proto as proto; }
/// use pb::proto::amp::codec::AmpBox;
/// use pb::proto::amp::dispatch::{AmpConfig, Dispatcher, Event};
///
/// let mut client: Dispatcher = Dispatcher::new(AmpConfig::default());
/// let mut server: Dispatcher = Dispatcher::new(AmpConfig::default());
/// let mut args = AmpBox::new();
/// args.insert("a", "13");
/// let tag = client.ask("Sum", args).unwrap();
/// server.handle_input(&client.poll_transmit().unwrap());
/// let Some(Event::Command { tag: Some(t), .. }) = server.poll_event() else { panic!() };
/// let mut answer = AmpBox::new();
/// answer.insert("total", "94");
/// server.answer(t, answer).unwrap();
/// client.handle_input(&server.poll_transmit().unwrap());
/// assert!(matches!(client.poll_event(), Some(Event::Answer { tag: t, .. }) if t == tag));
/// ```
#[derive(Debug)]
pub struct Dispatcher<S = ()> {
    config: AmpConfig<S>,
    codec: BoxCodec,
    input: BytesMut,
    output: BytesMut,
    /// Boxes sent while our StartTLS awaits its answer (Twisted's `_startingTLSBuffer`).
    held: BytesMut,
    /// Our own tags, by number (the peer only looks them up), so a cheap hash will do.
    outstanding: HashSet<u64, BuildHasherDefault<IdHasher>>,
    counter: u64,
    /// Complete boxes decoded from the peer's input, for the driver's idle timer.
    received: u64,
    state: State,
    tls_done: bool,
    closed_event: Option<DisconnectReason>,
}

impl<S> Dispatcher<S> {
    /// A dispatcher for a new connection.
    #[inline]
    pub fn new(config: AmpConfig<S>) -> Self {
        Self {
            codec: BoxCodec::new(config.codec),
            config,
            input: BytesMut::new(),
            output: BytesMut::new(),
            held: BytesMut::new(),
            outstanding: HashSet::default(),
            counter: 0,
            received: 0,
            state: State::Open,
            tls_done: false,
            closed_event: None,
        }
    }

    /// The configuration in force.
    #[inline]
    pub fn config(&self) -> &AmpConfig<S> {
        &self.config
    }

    /// Adds received bytes; boxes are decoded by [`Dispatcher::poll_event`].
    #[inline]
    pub fn handle_input(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Closed | State::Closing) {
            self.input.extend_from_slice(data);
        }
    }

    /// How many complete boxes have been decoded from the peer's input so far, including those
    /// that made no event: a driver's sign that the peer is alive (bytes of a box that never
    /// completes are not).
    #[inline]
    pub fn boxes_received(&self) -> u64 {
        self.received
    }

    /// Bytes received but not yet decoded.
    #[inline]
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    /// The next thing the peer sent, or `None` if more bytes are needed (or the transport must
    /// switch to TLS first). While closing, the boxes already received are still returned (as
    /// Twisted dispatches the rest of the data it read after `loseConnection`).
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(reason) = self.closed_event.take() {
            return Some(Event::Closed(reason));
        }
        loop {
            if !matches!(
                self.state,
                State::Open | State::TlsAsked(_) | State::Closing
            ) {
                return None;
            }
            let mut specials = Specials::default();
            let b = match self
                .codec
                .decode_taking(&mut self.input, |key, frame, value| {
                    specials.take(key, frame, value)
                }) {
                Ok(Some(b)) => {
                    self.received += 1;
                    b
                }
                Ok(None) => return None,
                Err(e) => return Some(self.refused(e)),
            };
            if let Some(event) = self.dispatch(b, specials) {
                return Some(event);
            }
        }
    }

    /// What box `b` is, by its special keys (taken out of it as it was decoded).
    #[inline]
    fn dispatch(&mut self, mut b: AmpBox, specials: Specials) -> Option<Event> {
        let Specials {
            answer,
            error,
            command,
            ask,
        } = specials;
        if let Some(tag) = answer {
            let Some(n) = self.take_outstanding(&tag) else {
                return self.unknown_tag(tag);
            };
            if self.state == State::TlsAsked(n) {
                self.state = State::TlsSwitching;
            }
            // An answer keeps every other key, special or not, as it came.
            if error.is_some() || command.is_some() || ask.is_some() {
                for (key, value) in [(ERROR, error), (COMMAND, command), (ASK, ask)] {
                    if let Some(value) = value {
                        b.insert(key, Bytes::from(value));
                    }
                }
            }
            return Some(Event::Answer { tag, answer: b });
        }
        if let Some(tag) = error {
            let Some(n) = self.take_outstanding(&tag) else {
                return self.unknown_tag(tag);
            };
            if self.state == State::TlsAsked(n) {
                self.release_held();
                self.state = State::Open;
            }
            let code = b.remove(ERROR_CODE).unwrap_or_default();
            let description = b
                .get(ERROR_DESCRIPTION)
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .unwrap_or_default();
            return Some(Event::Error {
                tag,
                code,
                description,
            });
        }
        if let Some(name) = command {
            return Some(Event::Command {
                name,
                tag: ask,
                args: b,
            });
        }
        Some(self.violation(AmpProtocolError::NoSpecialKey))
    }

    /// The number of our ask `tag`, now answered, if it awaited an answer.
    #[inline]
    fn take_outstanding(&mut self, tag: &[u8]) -> Option<u64> {
        tag_number(tag).filter(|n| self.outstanding.remove(n))
    }

    #[inline]
    fn unknown_tag(&mut self, tag: SmallBytes) -> Option<Event> {
        if self.config.close_on_unknown_answer {
            Some(self.violation(AmpProtocolError::UnknownTag(tag.into())))
        } else {
            tracing::warn!(?tag, "amp: ignoring an answer for an unknown tag");
            None
        }
    }

    /// The peer's input is not a box the codec accepts. A length over a limit (a key over 255
    /// bytes, which Twisted's `lengthLimitExceeded` meets with `loseConnection`, or a box over
    /// [`AmpConfig::codec`], limits of pb's own) closes gracefully: what was received before it
    /// is answered, the rest of the input is dropped. A box that is malformed (an empty one,
    /// on which Twisted raises out of `dataReceived`) is a violation: an abort.
    #[inline]
    fn refused(&mut self, e: BoxCodecError) -> Event {
        match e {
            BoxCodecError::KeyTooLong { .. }
            | BoxCodecError::ValueTooLong { .. }
            | BoxCodecError::TooManyKeys { .. }
            | BoxCodecError::BoxTooLarge { .. } => {
                self.input.clear();
                self.lose_connection();
                Event::Closing(DisconnectReason::Protocol(AmpProtocolError::Codec(e)))
            }
            BoxCodecError::EmptyBox | BoxCodecError::EmptyKey => {
                self.violation(AmpProtocolError::Codec(e))
            }
        }
    }

    /// The peer broke the protocol: close at once. Output not yet taken is dropped, as Twisted's
    /// reactor drops what `dataReceived` wrote before it raised (answers to boxes that came in
    /// the same read never leave).
    #[inline]
    fn violation(&mut self, e: AmpProtocolError) -> Event {
        self.close();
        self.output.clear();
        Event::Closed(DisconnectReason::Protocol(e))
    }

    /// Takes the bytes to write, if any.
    #[inline]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.output.is_empty() {
            None
        } else {
            Some(self.output.split().freeze())
        }
    }

    /// Moves the bytes to write onto the end of `dst`: [`Dispatcher::poll_transmit`] without a
    /// new buffer for every call.
    #[inline]
    pub fn transmit_into(&mut self, dst: &mut BytesMut) {
        if dst.is_empty() {
            // Swap rather than copy: `dst`'s spare room becomes ours.
            std::mem::swap(dst, &mut self.output);
        } else {
            dst.extend_from_slice(&self.output);
            self.output.clear();
        }
    }

    /// Bytes of boxes held back until a StartTLS handshake completes.
    #[inline]
    pub fn held_output(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing more may be asked or read: after a fatal error (once the output is
    /// written, close the transport) or after a close.
    #[inline]
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing | State::Closed)
    }

    /// Whether the transport must switch to TLS now: write the pending output, do the handshake,
    /// then call [`Dispatcher::tls_started`].
    #[inline]
    pub fn is_switching_to_tls(&self) -> bool {
        self.state == State::TlsSwitching
    }

    /// Starts closing, as Twisted's `loseConnection`: nothing more is read or asked; the boxes
    /// already received are still dispatched (see [`Dispatcher::poll_event`]) and answered, and
    /// the driver closes once the output is written. No effect once closed.
    #[inline]
    pub fn lose_connection(&mut self) {
        if self.state != State::Closed {
            self.state = State::Closing;
        }
    }

    /// Marks the connection closed: outstanding asks are forgotten and later sends are refused.
    #[inline]
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.outstanding.clear();
        self.input.clear();
        self.held.clear();
    }

    /// The number of asks awaiting an answer.
    #[inline]
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether answers may still be sent: until the connection is closed (while closing, the
    /// boxes already received are answered).
    #[inline]
    fn can_answer(&self) -> bool {
        self.state != State::Closed
    }

    /// Whether new commands may be sent: not once closing.
    #[inline]
    fn can_send(&self) -> Result<(), SendError> {
        match self.state {
            State::Closing | State::Closed => Err(SendError::Closed),
            _ => Ok(()),
        }
    }

    /// Writes box `b` with the special keys `extra` (sorted by key) added, if it is within
    /// [`AmpConfig::send_limits`]; a box that is not leaves nothing behind.
    #[inline]
    fn emit(&mut self, b: &AmpBox, extra: &[(&[u8], &[u8])]) -> Result<(), SendError> {
        let target = if matches!(self.state, State::TlsAsked(_) | State::TlsSwitching) {
            &mut self.held
        } else {
            &mut self.output
        };
        b.encode_with(extra, target, Some(&self.config.send_limits))
            .map_err(SendError::Encode)
    }

    /// Sends a command that wants an answer; returns its tag (lowercase hex of a counter from 1).
    #[inline]
    pub fn ask(&mut self, name: impl Into<Bytes>, args: AmpBox) -> Result<Bytes, SendError> {
        let n = self.ask_numbered(&name.into(), &args)?;
        Ok(Bytes::copy_from_slice(Tag::new(n).as_bytes()))
    }

    /// [`Dispatcher::ask`], returning its tag's number (the counter, see [`tag_number`]) and
    /// leaving `args` to the caller: no tag to allocate, nothing inserted into the box.
    #[inline]
    pub fn ask_numbered(&mut self, name: &[u8], args: &AmpBox) -> Result<u64, SendError> {
        self.can_send()?;
        if self.outstanding.len() >= self.config.max_outstanding {
            return Err(SendError::TooManyOutstanding {
                max: self.config.max_outstanding,
            });
        }
        // The counter advances even if the box cannot be sent, as Twisted's does.
        self.counter += 1;
        let n = self.counter;
        let tag = Tag::new(n);
        // `_ask` sorts before `_command`.
        self.emit(
            args,
            &[(ASK.as_bytes(), tag.as_bytes()), (COMMAND.as_bytes(), name)],
        )?;
        self.outstanding.insert(n);
        Ok(n)
    }

    /// Sends a command that wants no answer (no `_ask`). The tag counter still advances, as in
    /// Twisted.
    #[inline]
    pub fn tell(&mut self, name: impl Into<Bytes>, args: AmpBox) -> Result<(), SendError> {
        self.can_send()?;
        self.emit(&args, &[(COMMAND.as_bytes(), &name.into())])?;
        self.counter += 1;
        Ok(())
    }

    /// Asks the peer for StartTLS; boxes sent until its answer are held back, then sent over TLS.
    #[inline]
    pub fn ask_start_tls(&mut self) -> Result<Bytes, SendError> {
        if self.tls_done || matches!(self.state, State::TlsAsked(_) | State::TlsSwitching) {
            return Err(SendError::OnlyOneTls);
        }
        let n = self.ask_numbered(START_TLS.as_bytes(), &AmpBox::new())?;
        self.state = State::TlsAsked(n);
        Ok(Bytes::copy_from_slice(Tag::new(n).as_bytes()))
    }

    /// Answers the peer's StartTLS: the answer goes out in plain text, then the transport must
    /// switch (see [`Dispatcher::is_switching_to_tls`]).
    #[inline]
    pub fn accept_start_tls(&mut self, tag: impl AsRef<[u8]>) -> Result<(), SendError> {
        self.can_send()?;
        if self.tls_done || self.state != State::Open {
            return Err(SendError::OnlyOneTls);
        }
        self.answer(tag, AmpBox::new())?;
        self.state = State::TlsSwitching;
        Ok(())
    }

    /// Whether TLS was started on this connection.
    #[inline]
    pub fn is_tls(&self) -> bool {
        self.tls_done
    }

    /// The TLS handshake finished: held boxes are released and dispatch resumes.
    #[inline]
    pub fn tls_started(&mut self) {
        if self.state == State::TlsSwitching {
            self.tls_done = true;
            self.release_held();
            self.state = State::Open;
        }
    }

    #[inline]
    fn release_held(&mut self) {
        let held = self.held.split();
        self.output.unsplit(held);
    }

    /// Sends the answer to the peer's ask `tag`, also while closing. After a close it is dropped
    /// silently, so late answers are harmless.
    #[inline]
    pub fn answer(&mut self, tag: impl AsRef<[u8]>, answer: AmpBox) -> Result<(), SendError> {
        if !self.can_answer() {
            return Ok(());
        }
        self.emit(&answer, &[(ANSWER.as_bytes(), tag.as_ref())])
    }

    /// Sends an error answer to the peer's ask `tag`, also while closing; a fatal one starts
    /// closing (see [`Dispatcher::lose_connection`]): the connection closes once the output is
    /// written. After a close it is dropped silently.
    #[inline]
    pub fn error(
        &mut self,
        tag: impl AsRef<[u8]>,
        code: impl Into<Bytes>,
        description: &str,
        fatal: bool,
    ) -> Result<(), SendError> {
        if !self.can_answer() {
            return Ok(());
        }
        let mut b = AmpBox::new();
        b.insert_copy(ERROR.as_bytes(), tag.as_ref());
        b.insert(ERROR_CODE, code.into());
        b.insert(
            ERROR_DESCRIPTION,
            truncate_utf8(description, MAX_VALUE_LENGTH)
                .as_bytes()
                .to_vec(),
        );
        let sent = self.emit(&b, &[]);
        if fatal {
            self.lose_connection();
        }
        sent
    }

    /// Closes because of a failure the driver saw; the next [`Dispatcher::poll_event`] reports it.
    #[inline]
    pub fn fail(&mut self, reason: DisconnectReason) {
        self.close();
        self.closed_event = Some(reason);
    }
}

/// A tag of ours: its number in lowercase hex without leading zeros, as Twisted writes its
/// counter (`hex(n)[2:]`), on the stack.
struct Tag {
    hex: [u8; 16],
    at: usize,
}

impl Tag {
    #[inline]
    fn new(mut n: u64) -> Self {
        let mut hex = [0u8; 16];
        let mut at = hex.len();
        loop {
            at -= 1;
            hex[at] = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        Self { hex, at }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        self.hex.get(self.at..).unwrap_or_default()
    }
}

/// The number of one of our tags, as [`Dispatcher::ask_numbered`] returns it: `None` for bytes
/// that are not a tag this side writes (lowercase hex without leading zeros, at most 16
/// digits), which no ask of ours can be answered with.
#[inline]
pub fn tag_number(tag: &[u8]) -> Option<u64> {
    if tag.is_empty() || tag.len() > 16 || tag.first() == Some(&b'0') {
        return None;
    }
    let mut n = 0u64;
    for &c in tag {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u64::from(digit);
    }
    Some(n)
}

/// The special keys of a received box, taken out of it as it is decoded. A key given twice
/// keeps its last value, as every key does.
#[derive(Default)]
struct Specials {
    answer: Option<SmallBytes>,
    error: Option<SmallBytes>,
    command: Option<SmallBytes>,
    ask: Option<SmallBytes>,
}

impl Specials {
    /// Keeps the value of `key` (the bytes `value` of `frame`) if `key` is special, and says
    /// whether it did.
    #[inline]
    fn take(&mut self, key: &[u8], frame: &Bytes, value: std::ops::Range<usize>) -> bool {
        let slot = match key {
            b"_answer" => &mut self.answer,
            b"_error" => &mut self.error,
            b"_command" => &mut self.command,
            b"_ask" => &mut self.ask,
            _ => return false,
        };
        *slot = Some(SmallBytes::from_frame(frame, value));
        true
    }
}

/// The longest prefix of `s` that fits in `max` bytes without splitting a character: a long
/// description must not turn an error answer into an unsendable box.
#[inline]
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    PeerClosed,
    /// This side closed the connection (by request or after sending a fatal error).
    #[error("connection closed locally")]
    LocalClosed,
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// The peer broke the protocol.
    #[error("protocol violation by the peer")]
    Protocol(#[source] AmpProtocolError),
    /// No complete box came from the peer for this long, the configured
    /// [`AmpConfig::idle_timeout`].
    #[error("no complete box from the peer within idle_timeout = {0:?}")]
    IdleTimeout(Duration),
    /// A StartTLS handshake did not finish within [`AmpConfig::tls_handshake_timeout`].
    #[error("tls handshake not done within tls_handshake_timeout = {0:?}")]
    TlsHandshakeTimeout(Duration),
    /// Output waited and none of it could be written for the configured
    /// [`AmpConfig::write_stall_timeout`]: the peer stopped reading.
    #[error("no output written within write_stall_timeout = {0:?}")]
    WriteStalled(Duration),
}

/// A protocol violation by the peer; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmpProtocolError {
    /// The byte stream is not a valid sequence of boxes.
    #[error("malformed box")]
    Codec(#[source] BoxCodecError),
    /// A box with none of `_answer`, `_error` or `_command`.
    #[error("box with no _answer, _error or _command key")]
    NoSpecialKey,
    /// An answer or error for a tag that was never asked.
    #[error("answer for unknown tag {0:?}")]
    UnknownTag(Bytes),
    /// A command with no answer expected failed, or nobody handles it (Twisted closes then).
    #[error("command {0:?} without _ask failed")]
    FailedWithoutAnswer(Bytes),
    /// A responder failed in a way it did not declare; `UNKNOWN` was sent.
    #[error("responder for {0:?} failed: {1}")]
    ResponderFailed(Bytes, String),
    /// A StartTLS exchange failed.
    #[error("starttls failed: {0}")]
    Tls(String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pump(from: &mut Dispatcher, to: &mut Dispatcher) {
        while let Some(b) = from.poll_transmit() {
            to.handle_input(&b);
        }
    }

    #[test]
    fn long_error_descriptions_are_truncated_not_refused() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        let long = "😀".repeat(20_000);
        d.error(Bytes::from("1"), "X", &long, false).unwrap();
        let mut peer: Dispatcher = Dispatcher::new(AmpConfig::default());
        peer.ask("Y", AmpBox::new()).unwrap();
        peer.handle_input(&d.poll_transmit().unwrap());
        let Some(Event::Error { description, .. }) = peer.poll_event() else {
            panic!("no error event");
        };
        assert_eq!(description.len(), 65_532);
        assert!(description.chars().all(|c| c == '😀'));
    }

    #[test]
    fn tags_are_hex_and_advance_for_tells() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        for _ in 0..9 {
            d.ask("X", AmpBox::new()).unwrap();
        }
        d.tell("Y", AmpBox::new()).unwrap();
        assert_eq!(d.ask("X", AmpBox::new()).unwrap(), "b");
    }

    #[test]
    fn tag_numbers_read_only_the_tags_this_side_writes() {
        for n in [1, 9, 10, 255, 0xdead_beef, u64::MAX] {
            let tag = Tag::new(n);
            assert_eq!(tag.as_bytes(), format!("{n:x}").as_bytes());
            assert_eq!(tag_number(tag.as_bytes()), Some(n));
        }
        for bad in [
            &b""[..],
            b"0",
            b"0a",
            b"A",
            b"-1",
            b" 1",
            b"g",
            b"10000000000000000",
        ] {
            assert_eq!(tag_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_answer_with_a_tag_in_another_spelling_is_for_an_unknown_tag() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        for _ in 0..10 {
            d.ask("X", AmpBox::new()).unwrap();
        }
        // Tag "a" was asked; "0a" and "A" are other strings, as they are to Twisted.
        d.handle_input(b"\x00\x07_answer\x00\x020a\x00\x00");
        assert!(matches!(
            d.poll_event(),
            Some(Event::Closed(DisconnectReason::Protocol(
                AmpProtocolError::UnknownTag(t)
            ))) if t == "0a"
        ));
    }

    #[test]
    fn an_answer_keeps_its_other_keys_and_special_keys_given_twice_keep_the_last() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        let tag = d.ask("X", AmpBox::new()).unwrap();
        let _ = d.poll_transmit();
        // `_answer` twice (the last one is ours), with `_command`, `_ask` and `_error` too.
        d.handle_input(
            b"\x00\x07_answer\x00\x0299\x00\x04_ask\x00\x017\x00\x08_command\x00\x01Y\x00\x06_error\x00\x01E\x00\x01v\x00\x012\x00\x07_answer\x00\x011\x00\x00",
        );
        let Some(Event::Answer { tag: t, answer }) = d.poll_event() else {
            panic!("no answer");
        };
        assert_eq!(t, tag);
        assert_eq!(
            answer,
            AmpBox::from_iter([
                ("_ask", "7"),
                ("_command", "Y"),
                ("_error", "E"),
                ("v", "2")
            ])
        );
        // A command keeps every key but `_command` and `_ask`.
        d.handle_input(
            b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x01Z\x00\x05_zzzz\x00\x01z\x00\x00",
        );
        assert_eq!(
            d.poll_event(),
            Some(Event::Command {
                name: "Z".into(),
                tag: Some("1".into()),
                args: AmpBox::from_iter([("_zzzz", "z")]),
            })
        );
        // Long ones (kept as slices of the frame rather than inline) come through whole, and
        // an answer to a long tag carries it back.
        let (name, ask) = ("N".repeat(40), "a".repeat(300));
        let mut wire = BytesMut::new();
        AmpBox::from_iter([
            ("_ask", ask.clone()),
            ("_command", name.clone()),
            ("k", "v".to_string()),
        ])
        .encode(&mut wire)
        .unwrap();
        d.handle_input(&wire);
        let Some(Event::Command {
            name: n,
            tag: Some(t),
            args,
        }) = d.poll_event()
        else {
            panic!("no command");
        };
        assert_eq!(
            (n, &t, args),
            (
                name.as_str().into(),
                &ask.as_str().into(),
                AmpBox::from_iter([("k", "v")])
            )
        );
        d.answer(&t, AmpBox::from_iter([("r", "1")])).unwrap();
        let mut expected = BytesMut::new();
        AmpBox::from_iter([("_answer", ask.clone()), ("r", "1".to_string())])
            .encode(&mut expected)
            .unwrap();
        assert_eq!(d.poll_transmit().unwrap(), expected.freeze());
    }

    #[test]
    fn asks_tells_and_answers_write_what_twisted_writes() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        let mut args = AmpBox::new();
        args.insert("a", "13");
        args.insert("B", "x");
        assert_eq!(d.ask_numbered(b"Sum", &args), Ok(1));
        d.tell("Note", args.clone()).unwrap();
        d.answer(Bytes::from("5"), args.clone()).unwrap();
        let mut expected = BytesMut::new();
        for b in [
            AmpBox::from_iter([("a", "13"), ("B", "x"), ("_ask", "1"), ("_command", "Sum")]),
            AmpBox::from_iter([("a", "13"), ("B", "x"), ("_command", "Note")]),
            AmpBox::from_iter([("a", "13"), ("B", "x"), ("_answer", "5")]),
        ] {
            b.encode(&mut expected).unwrap();
        }
        assert_eq!(d.poll_transmit().unwrap(), expected.freeze());
        // A tell advances the counter, as in Twisted.
        assert_eq!(d.ask_numbered(b"Sum", &args), Ok(3));
        assert_eq!(d.outstanding(), 2);
    }

    #[test]
    fn outstanding_cap() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default().max_outstanding(2));
        d.ask("X", AmpBox::new()).unwrap();
        d.ask("X", AmpBox::new()).unwrap();
        assert_eq!(
            d.ask("X", AmpBox::new()),
            Err(SendError::TooManyOutstanding { max: 2 })
        );
    }

    #[test]
    fn unknown_answer_tag_closes_by_default() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        d.handle_input(b"\x00\x07_answer\x00\x03999\x00\x00");
        assert!(matches!(
            d.poll_event(),
            Some(Event::Closed(DisconnectReason::Protocol(
                AmpProtocolError::UnknownTag(_)
            )))
        ));
        assert_eq!(d.ask("X", AmpBox::new()), Err(SendError::Closed));
    }

    #[test]
    fn unknown_answer_tag_can_be_ignored() {
        let mut d: Dispatcher =
            Dispatcher::new(AmpConfig::default().close_on_unknown_answer(false));
        d.handle_input(b"\x00\x07_answer\x00\x03999\x00\x00");
        assert_eq!(d.poll_event(), None);
        assert!(d.ask("X", AmpBox::new()).is_ok());
        // Ignored, but a complete box all the same.
        assert_eq!(d.boxes_received(), 1);
    }

    #[test]
    fn only_complete_boxes_are_counted_as_received() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        let ask = b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x01X\x00\x00";
        let (last, head) = ask.split_last().unwrap();
        for byte in head {
            d.handle_input(&[*byte]);
            assert_eq!(d.poll_event(), None);
            assert_eq!(d.boxes_received(), 0);
        }
        d.handle_input(&[*last]);
        assert!(matches!(d.poll_event(), Some(Event::Command { .. })));
        assert_eq!(d.boxes_received(), 1);
    }

    #[test]
    fn fatal_error_closes_after_flush_and_answers_after_the_close_are_dropped() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        d.error(Bytes::from("1"), "BAD", "x", true).unwrap();
        assert!(d.is_closing());
        assert!(d.poll_transmit().is_some());
        // Closing, not closed: answers still go out, new commands do not.
        d.answer(Bytes::from("2"), AmpBox::new()).unwrap();
        assert!(d.poll_transmit().is_some());
        assert_eq!(d.ask("Late", AmpBox::new()), Err(SendError::Closed));
        assert_eq!(d.tell("Late", AmpBox::new()), Err(SendError::Closed));
        assert_eq!(d.accept_start_tls("3"), Err(SendError::Closed));
        d.close();
        d.answer(Bytes::from("4"), AmpBox::new()).unwrap();
        d.error(Bytes::from("5"), "BAD", "x", false).unwrap();
        assert!(d.poll_transmit().is_none());
    }

    #[test]
    fn closing_dispatches_what_was_received_and_reads_nothing_more() {
        let mut client: Dispatcher = Dispatcher::new(AmpConfig::default());
        let mut server: Dispatcher = Dispatcher::new(AmpConfig::default());
        for name in ["Fails", "Works"] {
            client.ask(name, AmpBox::new()).unwrap();
        }
        let ours = server.ask("Ours", AmpBox::new()).unwrap();
        pump(&mut client, &mut server);
        let Some(Event::Command { tag: Some(t1), .. }) = server.poll_event() else {
            panic!("the first command")
        };
        server.error(t1, "UNKNOWN", "Unknown Error", true).unwrap();
        assert!(server.is_closing());
        // Read after the close began: never dispatched.
        client.ask("Later", AmpBox::new()).unwrap();
        let mut answer = AmpBox::new();
        answer.insert("_answer", ours.clone());
        let later = [client.poll_transmit().unwrap(), answer.to_bytes().unwrap()].concat();
        let before = server.buffered_input();
        server.handle_input(&later);
        assert_eq!(server.buffered_input(), before);
        let Some(Event::Command {
            name,
            tag: Some(t2),
            ..
        }) = server.poll_event()
        else {
            panic!("the command read with the failing one")
        };
        assert_eq!(&name[..], b"Works");
        server.answer(t2, AmpBox::new()).unwrap();
        assert!(server.poll_event().is_none());
        client.handle_input(&server.poll_transmit().unwrap());
        assert!(
            matches!(client.poll_event(), Some(Event::Command { name, .. }) if &name[..] == b"Ours")
        );
        assert!(
            matches!(client.poll_event(), Some(Event::Error { code, .. }) if &code[..] == b"UNKNOWN")
        );
        assert!(matches!(client.poll_event(), Some(Event::Answer { tag, .. }) if &tag[..] == b"2"));
        assert!(client.poll_event().is_none());
        // Our own ask awaits no answer that could still come: the close forgets it.
        assert_eq!(server.outstanding(), 1);
        server.close();
        assert_eq!(server.outstanding(), 0);
    }

    #[test]
    fn a_key_too_long_closes_gracefully_and_an_empty_box_aborts() {
        let ask = b"\x00\x04_ask\x00\x011\x00\x08_command\x00\x01X\x00\x00";
        // A key length over 255: what came before is answered, nothing after is read.
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        d.handle_input(&[&ask[..], b"\x01\x00", &ask[..]].concat());
        let Some(Event::Command { tag: Some(t), .. }) = d.poll_event() else {
            panic!("the command before the long key");
        };
        assert_eq!(
            d.poll_event(),
            Some(Event::Closing(DisconnectReason::Protocol(
                AmpProtocolError::Codec(BoxCodecError::KeyTooLong { len: 256 })
            )))
        );
        assert!(d.is_closing());
        assert_eq!(d.poll_event(), None);
        d.answer(t, AmpBox::new()).unwrap();
        assert!(d.poll_transmit().is_some());
        // An empty box: an abort, and the answers not yet taken are dropped.
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        d.handle_input(&[&ask[..], b"\x00\x00"].concat());
        let Some(Event::Command { tag: Some(t), .. }) = d.poll_event() else {
            panic!("the command before the empty box");
        };
        d.answer(t, AmpBox::new()).unwrap();
        assert!(matches!(
            d.poll_event(),
            Some(Event::Closed(DisconnectReason::Protocol(
                AmpProtocolError::Codec(BoxCodecError::EmptyBox)
            )))
        ));
        assert!(d.poll_transmit().is_none());
    }

    #[test]
    fn lose_connection_after_a_close_stays_closed() {
        let mut d: Dispatcher = Dispatcher::new(AmpConfig::default());
        d.lose_connection();
        assert!(d.is_closing());
        d.close();
        d.lose_connection();
        d.answer(Bytes::from("1"), AmpBox::new()).unwrap();
        assert!(d.poll_transmit().is_none());
    }

    #[test]
    fn start_tls_holds_boxes_until_answered() {
        let mut client: Dispatcher = Dispatcher::new(AmpConfig::default());
        let mut server: Dispatcher = Dispatcher::new(AmpConfig::default());
        let tag = client.ask_start_tls().unwrap();
        client.ask("After", AmpBox::new()).unwrap();
        pump(&mut client, &mut server);
        let Some(Event::Command {
            name, tag: Some(t), ..
        }) = server.poll_event()
        else {
            panic!("no command");
        };
        assert_eq!(name, START_TLS);
        assert_eq!(
            server.poll_event(),
            None,
            "the held ask must not be sent yet"
        );
        server.accept_start_tls(t).unwrap();
        assert!(server.is_switching_to_tls());
        pump(&mut server, &mut client);
        assert!(matches!(client.poll_event(), Some(Event::Answer { tag: a, .. }) if a == tag));
        assert!(client.is_switching_to_tls());
        client.tls_started();
        server.tls_started();
        pump(&mut client, &mut server);
        assert!(
            matches!(server.poll_event(), Some(Event::Command { name, .. }) if name == "After")
        );
        assert_eq!(client.ask_start_tls(), Err(SendError::OnlyOneTls));
    }
}
