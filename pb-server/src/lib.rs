//! pb-server: listening for pb connections.
//!
//! A [`Server`] binds a TCP listener, optionally speaks TLS on it ([`ServerTls`]), and serves
//! either a root object (one shared by every connection, or one made per connection) or a
//! [`Portal`]: Perspective Broker's login, where each connection must log in (SCRAM-SHA-256
//! password, anonymous, or TLS client certificate) to receive its avatar, once: one login per
//! connection. It caps the number of live connections and shuts down gracefully: it stops
//! accepting, lets the calls in flight finish and their answers go out, then closes every
//! connection. [`ServerHandle::wait`] serves until then; a [`ShutdownHandle`] asks for it from
//! anywhere, a call handler included.
//!
//! # Layout
//! - this file: [`Server`], [`ServerBuilder`], [`ServerHandle`], [`ShutdownHandle`] and the
//!   accept loop;
//! - `tls`: [`ServerTls`] (certificates from PEM, client certificates), [`TlsInfo`] (which
//!   carries the verified [`PeerCertificate`]);
//! - `portal`: [`Portal`], [`Realm`], [`Avatar`], [`VerifierStore`] and the per-connection
//!   login object, which records the [`Identity`] a login establishes (both types are
//!   pb-core's, re-exported here);
//! - `dev` (feature `dev-certs`): throwaway certificates for tests and examples.
//!
//! # Example
//! ```
//! # use pb::ObjectRef;
//! # async fn example(root: ObjectRef) -> std::io::Result<()> {
//! let server = pb::Server::builder()
//!     .max_connections(100)
//!     .bind("127.0.0.1:0")
//!     .await?
//!     .serve(root);
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! With TLS and login (see `examples/login.rs` for a whole program):
//! ```no_run
//! # use pb::ObjectRef;
//! # fn avatar_for(user: Option<&str>) -> ObjectRef { panic!("the application supplies its avatar") }
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use pb::{Avatar, LoginRequest, Portal, Server, ServerTls, Verifiers};
//! let mut users = Verifiers::new();
//! users.insert("ada", "SCRAM-SHA-256$4096:...".parse()?); // from examples/make_verifier.rs
//! let portal = Portal::new(|login: LoginRequest| async move {
//!     let name = login.identity.name().map(str::to_owned);
//!     Ok(Avatar::new(avatar_for(name.as_deref())).on_logout(move || println!("{name:?} left")))
//! })
//! .verifiers(users);
//! let server = Server::builder()
//!     .tls(ServerTls::from_pem_files("server.crt", "server.key")?)
//!     .bind("0.0.0.0:8789")
//!     .await?
//!     .serve_portal(portal);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "dev-certs")]
mod dev_certs;

/// Development certificates, made at run time: a throwaway certificate authority that issues
/// server and client certificates, for tests and examples only. Empty unless the feature
/// `dev-certs` is on (`pb = { features = ["dev-certs"] }`, as a dev-dependency).
pub mod dev {
    #[cfg(feature = "dev-certs")]
    pub use crate::dev_certs::*;
}
mod portal;
mod tls;

use std::future::Future;
use std::hash::BuildHasherDefault;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dashmap::DashMap;
use pb_core::wake::FlagWake;
use pb_core::{Config, Connection, ObjectRef, Side};
use pb_proto::hash::IdHasher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinSet;

// pb-core's, so that the dialing side can record a verified certificate the way this
// server records a client's.
pub use pb_core::pem::TlsError;
pub use pb_core::{Identity, PeerCertificate};
pub use portal::{Avatar, LoginConfig, LoginRequest, Portal, Realm, VerifierStore, Verifiers};
/// The rustls crate pb-server is built with, for custom TLS configurations.
pub use rustls;
pub use tls::{ClientAuth, ServerTls, TlsInfo};

/// Builds a [`Server`] with non-default settings.
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    config: Config,
    max_connections: usize,
    max_connections_per_address: usize,
    tls: Option<TlsSetting>,
}

#[derive(Clone)]
enum TlsSetting {
    Ready(Arc<rustls::ServerConfig>),
    Settings(Box<ServerTls>),
}

impl std::fmt::Debug for TlsSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSetting::Ready(_) => f.write_str("rustls::ServerConfig"),
            TlsSetting::Settings(s) => s.fmt(f),
        }
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            config: Config::default(),
            max_connections: 1024,
            max_connections_per_address: 64,
            tls: None,
        }
    }
}

impl ServerBuilder {
    /// The settings of each connection (limits, timeouts).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The most connections served at once (default 1 024). Connections beyond it are closed
    /// as soon as they are accepted.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// The most connections served at once from one source address (default 64): an IPv4
    /// address, or an IPv6 /64. Connections beyond it are closed as soon as they are accepted,
    /// so that one address cannot take the slots of [`ServerBuilder::max_connections`] from
    /// everyone else. Raise it for clients behind one NAT or proxy address.
    pub fn max_connections_per_address(mut self, n: usize) -> Self {
        self.max_connections_per_address = n;
        self
    }

    /// How long a graceful shutdown waits for calls in flight (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Speak TLS 1.3 on every connection, with these certificates.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(TlsSetting::Settings(Box::new(tls)));
        self
    }

    /// Speak TLS with a rustls configuration of your own. Channel binding for SCRAM uses the
    /// session's exporter; with TLS 1.2 that is only sound with the extended master secret,
    /// which rustls negotiates by default.
    pub fn rustls_config(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(TlsSetting::Ready(config));
        self
    }

    /// Bind a TCP listener. Fails if the TLS settings are refused (for example a key that does
    /// not match its certificate).
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<Server> {
        let acceptor = self.acceptor()?;
        let listener = TcpListener::bind(addr).await?;
        Ok(Server::new(listener, self, acceptor))
    }

    /// Serve on a listener bound already, with these settings: for a socket handed over by
    /// the system (socket activation: `tokio::net::TcpListener::from_std`), or a test or
    /// harness that binds first. Fails if the TLS settings are refused, as [`Self::bind`] does.
    /// Without custom settings, [`Server::from_listener`] does the same and cannot fail.
    pub fn listener(self, listener: TcpListener) -> io::Result<Server> {
        let acceptor = self.acceptor()?;
        Ok(Server::new(listener, self, acceptor))
    }

    fn acceptor(&self) -> io::Result<Option<tokio_rustls::TlsAcceptor>> {
        Ok(match &self.tls {
            None => None,
            Some(TlsSetting::Ready(c)) => Some(tokio_rustls::TlsAcceptor::from(c.clone())),
            Some(TlsSetting::Settings(s)) => Some(tokio_rustls::TlsAcceptor::from(
                s.build().map_err(io::Error::other)?,
            )),
        })
    }
}

/// A bound server, ready to serve a root object.
///
/// Serving returns a [`ServerHandle`], which must be kept: the server stops accepting when it
/// is dropped. To serve until the server is shut down (by [`ServerHandle::shutdown`], or by a
/// [`ShutdownHandle`] from anywhere, a call handler included), await [`ServerHandle::wait`].
pub struct Server {
    listener: TcpListener,
    builder: ServerBuilder,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stop: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("builder", &self.builder)
            .field("tls", &self.acceptor.is_some())
            .finish()
    }
}

type RootFactory = Arc<dyn Fn(SocketAddr) -> ObjectRef + Send + Sync>;

/// What each connection is served.
#[derive(Clone)]
enum Service {
    Root(RootFactory),
    Portal(Portal),
}

impl Server {
    fn new(
        listener: TcpListener,
        builder: ServerBuilder,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> Server {
        Server {
            listener,
            builder,
            acceptor,
            stop: Arc::new(watch::channel(false).0),
        }
    }

    /// Bind with default settings.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Server> {
        ServerBuilder::default().bind(addr).await
    }

    /// Serve on a listener bound already, with default settings (as `axum::serve` takes a
    /// listener): for a socket handed over by the system (socket activation, through
    /// `tokio::net::TcpListener::from_std`), or a test or harness that binds first. With
    /// settings (TLS, limits), use [`ServerBuilder::listener`].
    ///
    /// ```
    /// # async fn example(root: pb::ObjectRef) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let addr = listener.local_addr()?;
    /// let server = pb::Server::from_listener(listener).serve(root);
    /// assert_eq!(server.local_addr(), addr);
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn from_listener(listener: TcpListener) -> Server {
        Server::new(listener, ServerBuilder::default(), None)
    }

    /// Start building a server with custom settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// A handle that shuts this server down once it serves, for the root object to hold
    /// before it is served (see [`ShutdownHandle`]). A shutdown asked for before serving stops
    /// the server as soon as it starts.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: self.stop.clone(),
        }
    }

    /// Serve one root object shared by every connection.
    #[must_use = "the server stops accepting when the returned ServerHandle is dropped: keep it, await its `wait()`, or call its `shutdown()`"]
    pub fn serve(self, root: impl Into<ObjectRef>) -> ServerHandle {
        let root = root.into();
        self.serve_with(move |_| root.clone())
    }

    /// Serve a root object made for each connection from the peer's address.
    #[must_use = "the server stops accepting when the returned ServerHandle is dropped: keep it, await its `wait()`, or call its `shutdown()`"]
    pub fn serve_with<F, R>(self, make_root: F) -> ServerHandle
    where
        F: Fn(SocketAddr) -> R + Send + Sync + 'static,
        R: Into<ObjectRef>,
    {
        let factory: RootFactory = Arc::new(move |addr| make_root(addr).into());
        self.start(Service::Root(factory))
    }

    /// Serve PB-style login: every connection's root is the portal's login object until the
    /// peer logs in and receives its avatar.
    #[must_use = "the server stops accepting when the returned ServerHandle is dropped: keep it, await its `wait()`, or call its `shutdown()`"]
    pub fn serve_portal(self, portal: Portal) -> ServerHandle {
        self.start(Service::Portal(portal))
    }

    fn start(self, service: Service) -> ServerHandle {
        let local_addr = self.local_addr();
        let (alive, dropped) = watch::channel(());
        let (done_tx, done) = watch::channel(());
        let live = Live::default();
        let stopping = Signals {
            stop: self.stop.subscribe(),
            dropped,
        };
        tokio::spawn(accept_loop(
            self.listener,
            self.builder,
            self.acceptor,
            service,
            stopping,
            live.clone(),
            done_tx,
        ));
        ServerHandle {
            local_addr,
            stop: self.stop,
            _alive: alive,
            done,
            live,
        }
    }
}

/// What ends the accept loop: a shutdown (from the handle or a [`ShutdownHandle`]), or the
/// [`ServerHandle`] dropped.
struct Signals {
    stop: watch::Receiver<bool>,
    /// Never sent on: its sender lives in the `ServerHandle`, and closes when that is dropped.
    dropped: watch::Receiver<()>,
}

/// The connections being served, by id: every connection's task inserts and removes its own,
/// and the handle and the shutdown read them all, so the map is sharded rather than locked
/// whole. The ids are ours (a process-wide counter), so they are hashed with one multiply
/// (`IdHasher`), not SipHash.
type Live = Arc<DashMap<u64, Connection, BuildHasherDefault<IdHasher>>>;

async fn accept_loop(
    listener: TcpListener,
    builder: ServerBuilder,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    service: Service,
    signals: Signals,
    live: Live,
    // Dropped when this loop is done: `ServerHandle::wait` waits for that.
    _done: watch::Sender<()>,
) {
    let Signals { stop, mut dropped } = signals;
    // What each connection's task checks.
    let stopping = stop.clone();
    // The end of the loop is waited for across every accept, not made again for each: a new
    // wait on a channel registers with it and unregisters when dropped, twice per connection.
    let ended = async move {
        let mut stop = stop;
        tokio::select! {
            biased;
            // An error means every sender is gone, the handle's included: a drop.
            r = stop.wait_for(|s| *s) => r.is_ok(),
            _ = dropped.changed() => false,
        }
    };
    tokio::pin!(ended);
    // Each connection's task holds a permit until it ends: the permits count the tasks, so
    // waiting for all of them at shutdown waits for every task, and no set of tasks has to be
    // kept (and reaped, a wake-up of this loop per connection).
    let permits = Arc::new(pb_core::transport::permits(builder.max_connections));
    let total = permits.available_permits();
    let per_address = pb_core::transport::PerAddress::new(builder.max_connections_per_address);
    let config = Arc::new(builder.config);
    // Whether the loop ends in a shutdown, which closes the connections, or because the
    // handle was dropped, which leaves them to end on their own.
    // The end is polled only after it woke the loop, not before every accept: polling a wait
    // on a channel takes the channel's lock.
    let woke = Arc::new(FlagWake::default());
    let woke_waker = Waker::from(woke.clone());
    let mut known_task = None;
    let shutdown = loop {
        let accepted = std::future::poll_fn(|cx| {
            if woke.take(cx.waker(), &mut known_task)
                && let Poll::Ready(shutdown) =
                    ended.as_mut().poll(&mut Context::from_waker(&woke_waker))
            {
                return Poll::Ready(Err(shutdown));
            }
            listener.poll_accept(cx).map(Ok)
        })
        .await;
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(shutdown) => break shutdown,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%addr, max = builder.max_connections, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let Some(slot) = per_address.enter(addr.ip()) else {
            tracing::warn!(
                %addr,
                max = builder.max_connections_per_address,
                "connection refused: max_connections_per_address reached"
            );
            drop(stream);
            continue;
        };
        let _ = pb_core::transport::prepare_tcp(&stream);
        let service = service.clone();
        let acceptor = acceptor.clone();
        let config = config.clone();
        let live = live.clone();
        let stop = stopping.clone();
        // Boxed, as its handshake is: a task's future is copied several times as it is spawned,
        // started and finished, a box's pointer costs nothing to copy.
        tokio::spawn(Box::pin(async move {
            let _permit = permit;
            let _slot = slot;
            if *stop.borrow() {
                return;
            }
            // The TLS path's state (rustls's, the portal's) is large: it lives in a box of its
            // own, so that every connection's task stays small and cheap to spawn and move.
            let established = match acceptor {
                // Boxed: the handshake's state is about a kilobyte, which would otherwise be
                // copied into the task and out of it again as the task is spawned and started.
                None => Box::pin(serve_one(stream, &service, &config, addr, None)).await,
                Some(acceptor) => {
                    match Box::pin(serve_tls(stream, acceptor, &service, &config, addr)).await {
                        Some(established) => established,
                        None => return,
                    }
                }
            };
            let (conn, reader) = match established {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%addr, error = %e, "handshake failed");
                    return;
                }
            };
            live.insert(conn.id(), conn.clone());
            // A shutdown that began during the handshake may have swept the live connections
            // before this one joined them: it closes itself the same way. (The shutdown sets
            // the flag before it sweeps, so one of the two always sees the connection.)
            if *stop.borrow() {
                let conn = conn.clone();
                tokio::spawn(async move { conn.close().await });
            }
            // The connection's reader runs in this task (it ends once the connection has
            // closed), or in a task of its own.
            match reader {
                Some(reader) => reader.await,
                None => conn.closed().await,
            }
            live.remove(&conn.id());
        }));
    };
    drop(listener);
    if shutdown {
        // Each closes gracefully (its calls in flight answered), all at once.
        let live: Vec<Connection> = live.iter().map(|c| c.value().clone()).collect();
        let mut closing = JoinSet::new();
        for conn in live {
            closing.spawn(async move { conn.close().await });
        }
        while closing.join_next().await.is_some() {}
    }
    // Wait for the connections' tasks to end, that is for every permit taken to be back (none
    // is taken any more: the listener is gone).
    let mut left = total - permits.available_permits();
    let mut back = Vec::new();
    while left > 0 {
        let n = u32::try_from(left).unwrap_or(u32::MAX);
        match permits.clone().acquire_many_owned(n).await {
            Ok(p) => back.push(p),
            Err(_) => break,
        }
        left -= n as usize;
    }
}

/// Refuse plaintext, run the TLS handshake within the handshake deadline, then serve the
/// connection; `None` when the peer is refused or the TLS handshake fails (logged here).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    service: &Service,
    config: &Config,
    addr: SocketAddr,
) -> Option<Result<Established, pb_core::ConnectError>> {
    // The TLS handshake counts against the pb handshake's deadline, so a peer that stalls in
    // it holds its slot no longer than one that stalls after.
    let deadline = pb_core::deadline::after(config.handshake_timeout);
    let mut stream = stream;
    match tokio::time::timeout_at(deadline, refuse_plaintext(&mut stream)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::info!(%addr, "plaintext peer on the tls listener: refused");
            return None;
        }
        Ok(Err(_)) | Err(_) => return None,
    }
    let accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "tls handshake failed");
            return None;
        }
        Err(_) => {
            tracing::info!(%addr, "tls handshake timed out");
            return None;
        }
    };
    let info = match TlsInfo::from_connection(tls.get_ref().1) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot read the tls session");
            return None;
        }
    };
    // The pb handshake gets what is left of the deadline, not a new one.
    let left = Config {
        handshake_timeout: deadline.saturating_duration_since(tokio::time::Instant::now()),
        ..config.clone()
    };
    Some(serve_one(tls, service, &left, addr, Some(Box::new(info))).await)
}

/// A connection, and its reader when the caller is to run it.
type Established = (Connection, Option<pb_core::ConnectionReader>);

/// Fatal TLS alert records (`unexpected_message`): what a plaintext peer on the TLS listener
/// gets, so that a pb client dialing without TLS can say "the server speaks tls" at once. Sent
/// twice because a pb peer decides on its first 8 bytes, and one alert record is 7.
const TLS_ALERT_UNEXPECTED_MESSAGE: [u8; 14] = [
    0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a, 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a,
];

/// Peek at the first byte: a TLS client opens with a handshake record (22). Anything else (a pb
/// hello starts with its length) gets an alert and is refused. Returns whether to go on.
async fn refuse_plaintext(stream: &mut tokio::net::TcpStream) -> io::Result<bool> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(false);
    }
    if first[0] == 0x16 {
        return Ok(true);
    }
    stream.write_all(&TLS_ALERT_UNEXPECTED_MESSAGE).await?;
    stream.shutdown().await?;
    Ok(false)
}

/// Run the handshake and start the connection. `tls` is boxed because it is held across the
/// handshake, whose state every plain connection's would otherwise grow by its size.
async fn serve_one<T>(
    io: T,
    service: &Service,
    config: &Config,
    addr: SocketAddr,
    tls: Option<Box<TlsInfo>>,
) -> Result<Established, pb_core::ConnectError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match service {
        Service::Root(factory) => {
            let root = Some(factory(addr));
            let (conn, reader) =
                Connection::establish_with_reader(io, config, Side::Server, root, Some(addr))
                    .await?;
            // Without a portal the certificate is the only identity there is: record it, so
            // that `Caller::identity::<Identity>()` works the same way.
            if let Some(cert) = tls.and_then(|t| t.peer_certificate) {
                conn.set_identity(Identity::Certificate(cert));
            }
            Ok((conn, Some(reader)))
        }
        // Boxed: the login path's state is large and rare next to a plain connection's.
        Service::Portal(portal) => {
            let tls = tls.map(|t| *t);
            let conn = Box::pin(portal.serve_connection(io, config, Some(addr), tls)).await?;
            Ok((conn, None))
        }
    }
}

/// A running server, serving until it is shut down or this handle is dropped.
///
/// Dropping the handle stops the server accepting connections; those already open go on until
/// they close. To serve until the server is shut down, await [`ServerHandle::wait`]; to shut it
/// down from elsewhere (a call handler, a signal task), give that code a [`ShutdownHandle`].
///
/// ```
/// # async fn example(root: pb::ObjectRef) -> std::io::Result<()> {
/// let server = pb::Server::bind("127.0.0.1:0").await?.serve(root);
/// let stop = server.shutdown_handle();
/// tokio::spawn(async move {
///     // For example on Ctrl-C: `tokio::signal::ctrl_c().await`.
///     stop.shutdown();
/// });
/// // Serves until the shutdown has closed every connection.
/// server.wait().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping a ServerHandle stops the server accepting connections: keep it, await its `wait()`, or call its `shutdown()`"]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    // Closes when the handle is dropped, which stops the accept loop.
    _alive: watch::Sender<()>,
    done: watch::Receiver<()>,
    live: Live,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections being served right now.
    pub fn connections(&self) -> Vec<Connection> {
        self.live.iter().map(|c| c.value().clone()).collect()
    }

    /// A handle that shuts this server down, to give to code that does not own the server
    /// handle (a call handler, a signal task). See [`ShutdownHandle`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: self.stop.clone(),
        }
    }

    /// Serve until the server is shut down: return once a shutdown, asked for by
    /// [`ServerHandle::shutdown`] or a [`ShutdownHandle`], has stopped accepting and closed
    /// every connection (as [`ServerHandle::shutdown`] describes). A program's `main` typically
    /// ends with it.
    pub async fn wait(&self) {
        let mut done = self.done.clone();
        // Never sent on: it ends with an error when the accept loop has finished.
        while done.changed().await.is_ok() {}
    }

    /// Stop accepting, let the calls in flight finish (up to the drain timeout) and their answers
    /// go out, then close every connection. Calls that arrive meanwhile are refused with a
    /// shutting-down error, never dropped silently.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        self.wait().await;
    }
}

/// Asks a server to shut down: cheap to clone, and usable from anywhere, a call handler
/// included. Get one from [`Server::shutdown_handle`] (before serving, so that the root object
/// can hold it) or [`ServerHandle::shutdown_handle`].
///
/// [`ShutdownHandle::shutdown`] only asks, and returns at once: the shutdown is the graceful one
/// of [`ServerHandle::shutdown`], which lets calls in flight finish, so a handler that asks
/// still answers its caller. [`ServerHandle::wait`] returns once the shutdown is done.
///
/// ```
/// # async fn example(make_root: impl Fn(pb::ShutdownHandle) -> pb::ObjectRef) -> std::io::Result<()> {
/// let server = pb::Server::bind("127.0.0.1:0").await?;
/// // The root's `stop` method calls `shutdown()` on its handle.
/// let root = make_root(server.shutdown_handle());
/// let server = server.serve(root);
/// server.wait().await;
/// # Ok(()) }
/// ```
///
/// The facade crate's documentation (`pb`, section "Serving until stopped") has the whole
/// program, with the handler.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Ask the server to shut down gracefully, and return at once (waiting here, in a handler,
    /// would wait for the handler's own call to finish). Asking again, or once the server is
    /// gone, does nothing.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Whether a shutdown has been asked for.
    pub fn is_shutdown(&self) -> bool {
        *self.stop.borrow()
    }
}
