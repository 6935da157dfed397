//! The tokio driver: pumps a byte stream through a [`Dispatcher`], runs responders, and gives
//! callers a cloneable [`AmpConnection`] handle.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::argument::AmpFields;
use super::codec::AmpBox;
use super::command::{
    AmpCallError, AmpCommand, NoErrors, UNHANDLED_ERROR_CODE, UNKNOWN_ERROR_CODE, classify,
    python_bytes_repr,
};
use super::dispatch::{AmpProtocolError, DisconnectReason, Event, START_TLS, SendError};
use super::locator::{AmpReply, Locator};
use super::{AmpConfig, Dispatcher};
use pb_proto::hash::IdHasher;

/// Stop reading and taking new calls while this much output waits to be written.
const HIGH_WATER: usize = 256 * 1024;
const READ_CHUNK: usize = 16 * 1024;
const REQUEST_QUEUE: usize = 64;
const TLS_ERROR_CODE: &[u8] = b"TLS_ERROR";

type RawResult<T> = Result<T, AmpCallError<NoErrors>>;

enum Request {
    Ask {
        name: Bytes,
        args: AmpBox,
        reply: oneshot::Sender<RawResult<AmpBox>>,
    },
    Tell {
        name: Bytes,
        args: AmpBox,
        reply: oneshot::Sender<RawResult<()>>,
    },
    StartTls {
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        reply: oneshot::Sender<RawResult<()>>,
    },
    Close,
}

/// A handle to one AMP connection; clone it freely. Both sides of a connection may call.
///
/// The connection runs in its own task until the peer closes it, a protocol violation or fatal
/// error closes it, or [`AmpConnection::close`] is called. It also ends when every handle is
/// dropped and its locator has no responders (a pure client).
///
/// ```no_run
/// # extern crate pb_core as pb;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pb_core::amp::{AmpConfig, AmpConnection, Locator};
///
/// #[derive(pb_derive::AmpCommand)]
/// #[amp(response = SumResponse)]
/// struct Sum { a: i64, b: i64 }
///
/// #[derive(pb_derive::AmpFields)]
/// struct SumResponse { total: i64 }
///
/// let conn = AmpConnection::connect("127.0.0.1:1234", AmpConfig::default(), Locator::new()).await?;
/// let SumResponse { total } = conn.call(&Sum { a: 13, b: 81 }).await?;
/// assert_eq!(total, 94);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AmpConnection {
    requests: mpsc::Sender<Request>,
    closed: watch::Receiver<Option<DisconnectReason>>,
}

impl AmpConnection {
    /// Runs an AMP connection over `stream` in a new task, answering with `locator`.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<S>(stream: S, config: AmpConfig, locator: Locator) -> AmpConnection
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::spawn_with(stream, config, |_| locator)
    }

    /// Like [`AmpConnection::spawn`], building the locator from the connection's own handle so that
    /// responders can call the peer back.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn_with<S, F>(stream: S, config: AmpConfig, make_locator: F) -> AmpConnection
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce(&AmpConnection) -> Locator,
    {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(None);
        let conn = AmpConnection {
            requests: tx,
            closed: closed_rx,
        };
        let locator = make_locator(&conn);
        let driver = Driver {
            dispatcher: Dispatcher::new(config),
            locator: Arc::new(locator),
            requests: rx,
            requests_open: true,
            pending: HashMap::default(),
            tls_client: None,
            responders: JoinSet::new(),
            running: HashMap::new(),
            out: BytesMut::new(),
            need_flush: false,
            peer_eof: false,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            close_reason: None,
            closed: closed_tx,
        };
        tokio::spawn(driver.run(stream));
        conn
    }

    /// Connects over TCP to `addr` and runs the connection.
    pub async fn connect(
        addr: impl ToSocketAddrs,
        config: AmpConfig,
        locator: Locator,
    ) -> io::Result<AmpConnection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::spawn(stream, config, locator))
    }

    /// Calls command `C` and waits for its typed response or error.
    pub async fn call<C: AmpCommand>(
        &self,
        command: &C,
    ) -> Result<C::Response, AmpCallError<C::Error>> {
        let mut args = AmpBox::new();
        command.to_box(&mut args).map_err(AmpCallError::Arguments)?;
        let answer = match self
            .raw_ask(Bytes::from_static(C::NAME.as_bytes()), args)
            .await
        {
            Ok(answer) => answer,
            Err(AmpCallError::Remote { code, description }) => {
                return Err(classify(code, description));
            }
            Err(e) => return Err(e.widen()),
        };
        C::Response::from_box(&answer).map_err(AmpCallError::BadAnswer)
    }

    /// Sends command `C` without asking for an answer (for `requires_answer = false` commands).
    /// It returns once the box is queued for writing.
    pub async fn send<C: AmpCommand>(&self, command: &C) -> Result<(), AmpCallError<C::Error>> {
        let mut args = AmpBox::new();
        command.to_box(&mut args).map_err(AmpCallError::Arguments)?;
        self.send_raw(C::NAME, args)
            .await
            .map_err(AmpCallError::widen)
    }

    /// Calls a command by name with a raw box and waits for the raw answer
    /// (Twisted's `callRemoteString`).
    pub async fn call_raw(
        &self,
        name: impl Into<Bytes>,
        args: AmpBox,
    ) -> Result<AmpBox, AmpCallError<NoErrors>> {
        match self.raw_ask(name.into(), args).await {
            Err(AmpCallError::Remote { code, description }) => Err(classify(code, description)),
            other => other,
        }
    }

    /// Sends a command by name with a raw box, asking for no answer.
    pub async fn send_raw(
        &self,
        name: impl Into<Bytes>,
        args: AmpBox,
    ) -> Result<(), AmpCallError<NoErrors>> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Tell {
            name: name.into(),
            args,
            reply,
        })
        .await?;
        self.wait(rx).await
    }

    /// Switches this connection to TLS as the client of Twisted's `StartTLS` command. Calls made
    /// while the switch is under way are sent over TLS once it is done.
    pub async fn start_tls(
        &self,
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<(), AmpCallError<NoErrors>> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::StartTls {
            config,
            server_name,
            reply,
        })
        .await?;
        match self.wait(rx).await {
            Err(AmpCallError::Remote { code, description }) => Err(classify(code, description)),
            other => other,
        }
    }

    /// Closes the connection once what is queued is written; outstanding calls fail.
    pub fn close(&self) {
        // A full queue means the driver is busy; it will still see the close after the others.
        let requests = self.requests.clone();
        if requests.try_send(Request::Close).is_err() {
            tokio::spawn(async move {
                let _ = requests.send(Request::Close).await;
            });
        }
    }

    /// Waits until the connection has ended, and says why.
    pub async fn closed(&self) -> DisconnectReason {
        let mut rx = self.closed.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(DisconnectReason::LocalClosed),
            Err(_) => DisconnectReason::LocalClosed,
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    fn reason(&self) -> DisconnectReason {
        self.closed
            .borrow()
            .clone()
            .unwrap_or(DisconnectReason::LocalClosed)
    }

    async fn raw_ask(&self, name: Bytes, args: AmpBox) -> RawResult<AmpBox> {
        let (reply, rx) = oneshot::channel();
        self.request(Request::Ask { name, args, reply }).await?;
        self.wait(rx).await
    }

    async fn request(&self, r: Request) -> RawResult<()> {
        self.requests
            .send(r)
            .await
            .map_err(|_| AmpCallError::Disconnected(self.reason()))
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<RawResult<T>>) -> RawResult<T> {
        match rx.await {
            Ok(r) => r,
            Err(_) => {
                let mut closed = self.closed.clone();
                let _ = closed.wait_for(Option::is_some).await;
                Err(AmpCallError::Disconnected(self.reason()))
            }
        }
    }
}

/// Accepts AMP connections on `listener` forever, building each one's locator with
/// `make_locator` (which gets the connection's handle, to call the peer back). It returns only
/// when accepting fails for the listener itself (e.g. out of file descriptors).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use pb_core::amp::{AmpConfig, Locator};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// pb_core::amp::serve(listener, AmpConfig::default(), |_conn| Locator::new()).await
/// # }
/// ```
pub async fn serve<F>(listener: TcpListener, config: AmpConfig, make_locator: F) -> io::Result<()>
where
    F: Fn(&AmpConnection) -> Locator + Send + Sync + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // One failed handshake is that connection's problem, not the listener's.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::debug!(error = %e, "amp: accept failed for one connection");
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "amp: cannot set nodelay");
        }
        tracing::debug!(%peer, "amp: accepted connection");
        let conn = AmpConnection::spawn_with(stream, config.clone(), &make_locator);
        tokio::spawn(async move {
            let reason = conn.closed().await;
            tracing::debug!(%peer, %reason, "amp: connection ended");
        });
    }
}

/// A plain stream, or the same stream after StartTLS.
enum Transport<S> {
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
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &[u8],
) -> io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(out).await.map(Some)
    }
}

/// The message a panic was raised with, when it is text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(not text)"
    }
}

/// Why [`Driver::pump`] returned.
enum Pumped {
    Closed(DisconnectReason),
    SwitchTls,
}

struct TlsClientRequest {
    tag: Bytes,
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    reply: oneshot::Sender<RawResult<()>>,
}

struct Driver {
    dispatcher: Dispatcher,
    locator: Arc<Locator>,
    requests: mpsc::Receiver<Request>,
    requests_open: bool,
    /// Keyed by our own tags, so a cheap hash will do.
    pending: HashMap<Bytes, oneshot::Sender<RawResult<AmpBox>>, BuildHasherDefault<IdHasher>>,
    tls_client: Option<TlsClientRequest>,
    responders: JoinSet<AmpReply>,
    /// The tag and command name of each running responder, by task id.
    running: HashMap<tokio::task::Id, (Option<Bytes>, Bytes)>,
    out: BytesMut,
    need_flush: bool,
    /// The peer shut down its writing half; no more input will come.
    peer_eof: bool,
    read_buf: Box<[u8]>,
    close_reason: Option<DisconnectReason>,
    closed: watch::Sender<Option<DisconnectReason>>,
}

impl Driver {
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut transport = Transport::Plain(stream);
        let reason = loop {
            let (mut rd, mut wr) = tokio::io::split(transport);
            match self.pump(&mut rd, &mut wr).await {
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

    async fn pump<S>(
        &mut self,
        rd: &mut ReadHalf<Transport<S>>,
        wr: &mut WriteHalf<Transport<S>>,
    ) -> Pumped
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let max_running = self.dispatcher.config().max_in_flight_responders;
            self.take_ready(max_running);
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
                && self.out.is_empty()
                && !self.need_flush
            {
                self.dispatcher.close();
                return Pumped::Closed(DisconnectReason::PeerClosed);
            }
            let can_read = !self.peer_eof
                && !closing
                && !switching
                && self.out.len() < HIGH_WATER
                && self.responders.len() < max_running;
            let can_request = !closing
                && self.requests_open
                && self.out.len() + self.dispatcher.held_output() < HIGH_WATER;
            // Everything that was ready is in `out` by now: write it first, in one go, and only
            // then wait for more.
            tokio::select! {
                biased;
                r = write_or_flush(wr, &self.out), if !self.out.is_empty() || self.need_flush => match r {
                    Ok(Some(0)) => return Pumped::Closed(DisconnectReason::Io("write returned zero".into())),
                    Ok(Some(n)) => {
                        self.out.advance(n);
                        self.need_flush = true;
                    }
                    Ok(None) => self.need_flush = false,
                    Err(e) => return Pumped::Closed(DisconnectReason::Io(e.to_string())),
                },
                Some(done) = self.responders.join_next_with_id(), if !self.responders.is_empty() => {
                    self.handle_reply(done);
                }
                req = self.requests.recv(), if can_request => match req {
                    Some(req) => self.handle_request(req),
                    None => self.requests_open = false,
                },
                r = rd.read(&mut self.read_buf), if can_read => match r {
                    Ok(0) => {
                        // The peer may only have shut down its writing half: answer what it
                        // already asked before closing, as a half-closing client expects.
                        self.peer_eof = true;
                    }
                    Ok(n) => self.dispatcher.handle_input(self.read_buf.get(..n).unwrap_or(&[])),
                    Err(e) => {
                        self.dispatcher.close();
                        return Pumped::Closed(DisconnectReason::Io(e.to_string()));
                    }
                },
                else => {
                    // Unreachable by the checks above; closing beats waiting on nothing forever.
                    tracing::error!("amp: connection driver has nothing to wait for; closing");
                    self.dispatcher.close();
                    return Pumped::Closed(DisconnectReason::LocalClosed);
                }
            }
        }
    }

    /// Takes in everything that is ready without waiting (decoded boxes, finished responders,
    /// queued requests) and gathers the output it makes, so that one write carries all of it.
    /// Per box, a wait in `select!` would cost a poll of every branch and, worse, a write.
    fn take_ready(&mut self, max_running: usize) {
        loop {
            let mut progress = false;
            // Commands already buffered wait too while too many responders run.
            while self.responders.len() < max_running
                && let Some(event) = self.dispatcher.poll_event()
            {
                self.handle_event(event);
                progress = true;
            }
            while let Some(done) = self.responders.try_join_next_with_id() {
                self.handle_reply(done);
                progress = true;
            }
            self.dispatcher.transmit_into(&mut self.out);
            while !self.dispatcher.is_closing()
                && self.requests_open
                && self.out.len() + self.dispatcher.held_output() < HIGH_WATER
            {
                match self.requests.try_recv() {
                    Ok(req) => {
                        self.handle_request(req);
                        self.dispatcher.transmit_into(&mut self.out);
                        progress = true;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.requests_open = false;
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        self.dispatcher.transmit_into(&mut self.out);
    }

    fn close_with(&mut self, reason: DisconnectReason) {
        if self.close_reason.is_none() {
            self.close_reason = Some(reason);
        }
        self.dispatcher.close();
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Command { name, tag, args } => self.handle_command(name, tag, args),
            Event::Answer { tag, answer } => {
                if self.tls_client.as_ref().is_some_and(|t| t.tag == tag) {
                    // The switch itself happens in `run` once the output is flushed.
                    return;
                }
                if let Some(reply) = self.pending.remove(&tag) {
                    let _ = reply.send(Ok(answer));
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
                if let Some(reply) = self.pending.remove(&tag) {
                    let _ = reply.send(Err(AmpCallError::Remote { code, description }));
                }
            }
            Event::Closed(reason) => {
                tracing::warn!(%reason, "amp: closing connection");
                // An abort, as in Twisted: what is not written yet stays unwritten.
                self.out.clear();
                self.close_with(reason);
            }
        }
    }

    fn handle_command(&mut self, name: Bytes, tag: Option<Bytes>, args: AmpBox) {
        if name.as_ref() == START_TLS.as_bytes() && !self.locator.contains(START_TLS) {
            self.handle_start_tls(tag);
            return;
        }
        match self.locator.dispatch_boxed(&name, args) {
            Some(mut fut) => {
                // Most responders answer without waiting: poll once here, and pay for a task
                // only if it waits. A no-op waker is enough, as the task polls it again at once.
                let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
                }));
                match first {
                    Ok(Poll::Ready(reply)) => self.handle_reply_for(tag, name, reply),
                    Ok(Poll::Pending) => {
                        let id = self.responders.spawn(fut).id();
                        self.running.insert(id, (tag, name));
                    }
                    Err(panic) => {
                        let why = format!("responder panicked: {}", panic_message(&*panic));
                        self.handle_reply_for(tag, name, AmpReply::Failed(why));
                    }
                }
            }
            None => match tag {
                Some(tag) => {
                    let description = format!("Unhandled Command: {}", python_bytes_repr(&name));
                    let _ = self
                        .dispatcher
                        .error(tag, UNHANDLED_ERROR_CODE, &description, false);
                }
                None => self.failed_without_answer(name, "no responder"),
            },
        }
    }

    fn failed_without_answer(&mut self, name: Bytes, why: &str) {
        if self.dispatcher.config().close_on_failed_no_answer {
            tracing::warn!(command = ?name, why, "amp: command without _ask failed; closing");
            self.close_with(DisconnectReason::Protocol(
                AmpProtocolError::FailedWithoutAnswer(name),
            ));
        } else {
            tracing::warn!(command = ?name, why, "amp: command without _ask failed");
        }
    }

    fn handle_start_tls(&mut self, tag: Option<Bytes>) {
        let Some(tag) = tag else {
            self.failed_without_answer(Bytes::from_static(START_TLS.as_bytes()), "no _ask");
            return;
        };
        if self.dispatcher.config().tls_server.is_none() {
            let _ = self
                .dispatcher
                .error(tag, TLS_ERROR_CODE, "TLS not available", false);
            return;
        }
        if self.dispatcher.accept_start_tls(tag.clone()).is_err() {
            let _ = self
                .dispatcher
                .error(tag, TLS_ERROR_CODE, "TLS already started", false);
        }
    }

    fn handle_reply(&mut self, done: Result<(tokio::task::Id, AmpReply), tokio::task::JoinError>) {
        let (id, reply) = match done {
            Ok((id, reply)) => (id, reply),
            Err(e) => (
                e.id(),
                AmpReply::Failed(format!("responder task failed: {e}")),
            ),
        };
        let Some((tag, name)) = self.running.remove(&id) else {
            return;
        };
        self.handle_reply_for(tag, name, reply);
    }

    fn handle_reply_for(&mut self, tag: Option<Bytes>, name: Bytes, reply: AmpReply) {
        match (tag, reply) {
            (Some(tag), AmpReply::Answer(b)) => {
                if let Err(e) = self.dispatcher.answer(tag.clone(), b) {
                    self.unknown(tag, name, format!("bad answer: {e}"));
                }
            }
            (Some(tag), AmpReply::Error(e)) => {
                if e.fatal {
                    self.close_reason
                        .get_or_insert(DisconnectReason::LocalClosed);
                }
                if let Err(err) =
                    self.dispatcher
                        .error(tag.clone(), e.code, &e.description, e.fatal)
                {
                    self.unknown(tag, name, format!("bad error answer: {err}"));
                }
            }
            (Some(tag), AmpReply::Failed(why)) => self.unknown(tag, name, why),
            (None, AmpReply::Answer(_)) => {}
            (None, AmpReply::Error(e)) => self.failed_without_answer(name, &e.to_string()),
            (None, AmpReply::Failed(why)) => self.failed_without_answer(name, &why),
        }
    }

    /// Twisted's treatment of an undeclared failure: log it, send `UNKNOWN`, close.
    fn unknown(&mut self, tag: Bytes, name: Bytes, why: String) {
        tracing::error!(command = ?name, %why, "amp: responder failed; sending UNKNOWN and closing");
        self.close_reason.get_or_insert(DisconnectReason::Protocol(
            AmpProtocolError::ResponderFailed(name, why),
        ));
        let _ = self
            .dispatcher
            .error(tag, UNKNOWN_ERROR_CODE, "Unknown Error", true);
    }

    fn handle_request(&mut self, req: Request) {
        match req {
            Request::Ask { name, args, reply } => match self.dispatcher.ask(name, args) {
                Ok(tag) => {
                    self.pending.insert(tag, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(self.send_error(e)));
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

    fn send_error(&self, e: SendError) -> AmpCallError<NoErrors> {
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

    async fn switch_tls<S>(
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
        let result = match self.tls_client.take() {
            Some(req) => {
                let connector = tokio_rustls::TlsConnector::from(req.config);
                match connector.connect(req.server_name, stream).await {
                    Ok(s) => {
                        let _ = req.reply.send(Ok(()));
                        Ok(Transport::Client(Box::new(s)))
                    }
                    Err(e) => {
                        let reason = tls_error(e.to_string());
                        let _ = req
                            .reply
                            .send(Err(AmpCallError::Disconnected(reason.clone())));
                        Err(reason)
                    }
                }
            }
            None => match self.dispatcher.config().tls_server.clone() {
                Some(config) => tokio_rustls::TlsAcceptor::from(config)
                    .accept(stream)
                    .await
                    .map(|s| Transport::Server(Box::new(s)))
                    .map_err(|e| tls_error(e.to_string())),
                None => Err(tls_error("no tls server configuration".into())),
            },
        };
        if result.is_ok() {
            self.dispatcher.tls_started();
        } else {
            self.dispatcher.close();
        }
        result
    }

    fn finish(mut self, reason: DisconnectReason) {
        self.dispatcher.close();
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(AmpCallError::Disconnected(reason.clone())));
        }
        if let Some(tls) = self.tls_client.take() {
            let _ = tls
                .reply
                .send(Err(AmpCallError::Disconnected(reason.clone())));
        }
        self.responders.abort_all();
        self.closed.send_replace(Some(reason.clone()));
        self.requests.close();
        while let Ok(req) = self.requests.try_recv() {
            let err = AmpCallError::Disconnected(reason.clone());
            match req {
                Request::Ask { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Request::Tell { reply, .. } | Request::StartTls { reply, .. } => {
                    let _ = reply.send(Err(err));
                }
                Request::Close => {}
            }
        }
    }
}
