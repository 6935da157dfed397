//! The AMP connection handle ([`AmpConnection`]): calls, StartTLS and close, made by sending
//! requests to the connection's driver task; and [`serve`], the accept loop.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::argument::AmpFields;
use super::calls::{Calls, NotQueued, Request, SlotGuard};
use super::codec::AmpBox;
use super::command::{AmpCallError, AmpCommand, NoErrors, classify};
use super::dispatch::DisconnectReason;
use super::driver::*;
use super::locator::Locator;
use super::{AmpConfig, Dispatcher};
use pb_proto::liveness::{Liveness, LivenessConfig};

/// A handle to one AMP connection; clone it freely. Both sides of a connection may call.
///
/// The connection runs in its own task until the peer closes it, a protocol violation or fatal
/// error closes it, no complete box comes from the peer for [`AmpConfig::idle_timeout`], or
/// [`AmpConnection::close`] is called. It also ends when every handle is dropped and its locator
/// has no responders (a pure client).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pb::amp::{AmpConfig, AmpConnection, Locator};
///
/// #[derive(pb::AmpCommand)]
/// #[amp(response = SumResponse)]
/// struct Sum { a: i64, b: i64 }
///
/// #[derive(pb::AmpFields)]
/// struct SumResponse { total: i64 }
///
/// let conn = AmpConnection::connect("127.0.0.1:1234", AmpConfig::default(), Locator::new()).await?;
/// let SumResponse { total } = conn.call(&Sum { a: 13, b: 81 }).await?;
/// assert_eq!(total, 94);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmpConnection {
    calls: Handle,
    closed: watch::Receiver<Option<DisconnectReason>>,
}

impl fmt::Debug for AmpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmpConnection")
            .field("closed", &*self.closed.borrow())
            .finish_non_exhaustive()
    }
}

/// The connection's shared [`Calls`], counted: the driver hears when the last handle goes.
struct Handle(Arc<Calls>);

impl Clone for Handle {
    fn clone(&self) -> Self {
        self.0.add_handle();
        Handle(self.0.clone())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.drop_handle();
    }
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
        Self::spawn_from(stream, None, config, make_locator)
    }

    /// [`AmpConnection::spawn_with`], knowing the peer's address (for the logs).
    fn spawn_from<S, F>(
        stream: S,
        peer: Option<SocketAddr>,
        config: AmpConfig,
        make_locator: F,
    ) -> AmpConnection
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce(&AmpConnection) -> Locator,
    {
        let calls = Calls::new();
        let (closed_tx, closed_rx) = watch::channel(None);
        let conn = AmpConnection {
            calls: Handle(calls.clone()),
            closed: closed_rx,
        };
        let locator = make_locator(&conn);
        let timers = LivenessConfig {
            idle: config.idle_timeout,
            ..LivenessConfig::default()
        };
        let driver = Driver {
            live: Liveness::new(timers, now()),
            boxes_seen: 0,
            busy: false,
            writes: 0,
            stall_seen: (0, false),
            peer,
            dispatcher: Dispatcher::new(config),
            locator: Arc::new(locator),
            calls,
            batch: Vec::new(),
            answers: Vec::new(),
            wakers: Vec::new(),
            requests_open: true,
            pending: HashMap::default(),
            tls_client: None,
            responders: JoinSet::new(),
            running: HashMap::new(),
            running_bytes: 0,
            held: std::collections::VecDeque::new(),
            held_bytes: 0,
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
        // Queued even when the queue is full: the driver sees it after the others.
        self.calls.0.request_close();
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
        let calls = &*self.calls.0;
        let mut call = Some((name, args));
        let mut slot = SlotGuard { calls, slot: None };
        loop {
            // Queued with this poll's waker in its slot, under one acquisition of the lock.
            let queued =
                std::future::poll_fn(|cx| Poll::Ready(calls.try_ask(&mut call, cx.waker())));
            match queued.await {
                Ok(s) => {
                    slot.slot = Some(s);
                    break;
                }
                Err(NotQueued::Closed(reason)) => return Err(AmpCallError::Disconnected(reason)),
                Err(NotQueued::Full) => calls.room().await,
            }
        }
        // The slot has this poll's waker already, and the answer cannot have come yet: the
        // first look at the slot is saved.
        let mut first = true;
        std::future::poll_fn(|cx| {
            if std::mem::take(&mut first) {
                Poll::Pending
            } else {
                slot.poll_answer(cx)
            }
        })
        .await
    }

    async fn request(&self, r: Request) -> RawResult<()> {
        let calls = &*self.calls.0;
        let mut r = Some(r);
        loop {
            match calls.try_request(&mut r) {
                Ok(()) => return Ok(()),
                Err(NotQueued::Closed(reason)) => return Err(AmpCallError::Disconnected(reason)),
                Err(NotQueued::Full) => calls.room().await,
            }
        }
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

/// Accepts AMP connections on `listener` until the future is dropped, building each one's
/// locator with `make_locator` (which gets the connection's handle, to call the peer back).
///
/// It keeps at most [`AmpConfig::max_connections`] connections open, and
/// [`AmpConfig::max_connections_per_address`] from one source address: one more is closed as
/// soon as it is accepted (and logged). A connection on which no complete box arrives for
/// [`AmpConfig::idle_timeout`] (60 s by default) is closed, which frees its slot. When accepting
/// fails for the listener itself (out of file descriptors, say) it logs the error, waits 50 ms
/// and goes on: the server outlives the shortage, as pb's native server does. It never returns
/// an error.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use pb::amp::{AmpConfig, Locator};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// pb::amp::serve(listener, AmpConfig::default(), |_conn| Locator::new()).await
/// # }
/// ```
pub async fn serve<F>(listener: TcpListener, config: AmpConfig, make_locator: F) -> io::Result<()>
where
    F: Fn(&AmpConnection) -> Locator + Send + Sync + 'static,
{
    let permits = Arc::new(crate::transport::permits(config.max_connections.max(1)));
    let per_address = crate::transport::PerAddress::new(config.max_connections_per_address);
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
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning
                // or giving up; connections that end free what is short.
                tracing::warn!(error = %e, "amp: accept failed; retrying in 50 ms");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                max = config.max_connections,
                "amp: connection refused: max_connections reached"
            );
            drop(stream);
            continue;
        };
        let Some(slot) = per_address.enter(peer.ip()) else {
            tracing::warn!(
                %peer,
                max = config.max_connections_per_address,
                "amp: connection refused: max_connections_per_address reached"
            );
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "amp: cannot set nodelay");
        }
        tracing::debug!(%peer, "amp: accepted connection");
        let conn = AmpConnection::spawn_from(stream, Some(peer), config.clone(), &make_locator);
        tokio::spawn(async move {
            let reason = conn.closed().await;
            tracing::debug!(%peer, %reason, "amp: connection ended");
            drop((permit, slot));
        });
    }
}
